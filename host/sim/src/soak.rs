//! Deterministic simulation testing: a seed gives a sequence of random operations and faults
//! ([`generate`]), which runs on fresh simulated nodes ([`run_ops`]) with the store's
//! invariants checked after every heal and at the end; a failing sequence is cut down to a
//! shorter one that still fails ([`shrink`]).
//!
//! Every node's wall clock is skewed by a seeded amount within the HLC's allowed drift.
//!
//! Invariants, on every member that is running, online and not revoked:
//! - all hold the same state digest (within the deadline);
//! - no acknowledged write is lost: a `put` that returned is there with its value, once its
//!   author is reachable (a crashed author's acknowledged writes survive its restart);
//! - a key holds one of the values written to it (a hot key, written from many nodes, may
//!   hold any of them);
//! - the writes a revoked node made after its revocation are projected nowhere, once the
//!   revoking member is among the reachable ones (before that, no one could know);
//! - every log's witness chain, attestations and signatures verify.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lattice_log::SplitMix64;
use lattice_model::StoreId;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{Sim, SimConfig, SimError, SimMetrics};

/// Settings of a random-fault run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Nodes in the simulation (node 0 creates the store; all join it).
    pub nodes: usize,
    /// Operations generated per seed.
    pub steps: usize,
    /// Gossip faults.
    pub network: SimConfig,
    /// Longest wait for the members to agree at a check.
    pub deadline: Duration,
    /// Each node's wall clock is off by up to this much either way (milliseconds; drawn
    /// from the seed), within the HLC's allowed drift.
    pub max_skew_ms: i64,
}

impl Default for SoakConfig {
    fn default() -> SoakConfig {
        SoakConfig {
            nodes: 5,
            steps: 40,
            network: SimConfig {
                loss: 0.1,
                duplicate: 0.05,
                max_delay: Duration::from_millis(20),
            },
            deadline: Duration::from_secs(30),
            max_skew_ms: 120_000,
        }
    }
}

/// Keys written many times, from many nodes (conflicts).
const HOT_KEYS: usize = 3;

/// One step of a random-fault run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A `kv` put on `node`.
    Put {
        /// The writer.
        node: usize,
        /// The key: unique per step, or one of a few hot keys.
        key: String,
        /// The value.
        value: String,
    },
    /// `count` concurrent puts on `node`; the node is killed once `crash_after` of them
    /// have been acknowledged (the rest are in flight).
    Burst {
        /// The writer.
        node: usize,
        /// Puts started.
        count: usize,
        /// Acknowledgements to wait for before the kill.
        crash_after: usize,
        /// Prefix of their keys (unique per step).
        prefix: String,
    },
    /// Split the network into groups.
    Partition(Vec<Vec<usize>>),
    /// Join the network again, then check the invariants.
    Heal,
    /// Take a node off the network.
    Offline(usize),
    /// Bring it back.
    Online(usize),
    /// Kill a node (no final flush).
    Crash(usize),
    /// Start a crashed node from its data.
    Restart(usize),
    /// Node `by` revokes `peer`.
    Revoke {
        /// The revoking member.
        by: usize,
        /// The revoked one.
        peer: usize,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put { node, key, value } => write!(f, "put({node}, {key:?}, {value:?})"),
            Op::Burst {
                node,
                count,
                crash_after,
                ..
            } => write!(f, "burst({node}, {count} puts, crash after {crash_after})"),
            Op::Partition(groups) => write!(f, "partition({groups:?})"),
            Op::Heal => f.write_str("heal()"),
            Op::Offline(n) => write!(f, "offline({n})"),
            Op::Online(n) => write!(f, "online({n})"),
            Op::Crash(n) => write!(f, "crash({n})"),
            Op::Restart(n) => write!(f, "restart({n})"),
            Op::Revoke { by, peer } => write!(f, "revoke(by {by}, peer {peer})"),
        }
    }
}

/// The operations of `seed`: a pure function of the seed and the settings.
pub fn generate(seed: u64, config: &SoakConfig) -> Vec<Op> {
    let mut rng = SplitMix64::new(seed);
    let n = config.nodes.max(2);
    let mut down = BTreeSet::new();
    let mut offline = BTreeSet::new();
    let mut revoked = false;
    let mut ops = Vec::with_capacity(config.steps);
    for step in 0..config.steps {
        let roll = rng.below(100);
        let node = rng.below(n);
        let op = match roll {
            0..50 => {
                let key = if rng.below(4) == 0 {
                    format!("hot{}", rng.below(HOT_KEYS))
                } else {
                    format!("k{step}")
                };
                Op::Put {
                    node,
                    key,
                    value: format!("v{step}-{node}"),
                }
            }
            50..55 if !down.contains(&node) => {
                let count = 2 + rng.below(8);
                down.insert(node);
                Op::Burst {
                    node,
                    count,
                    crash_after: rng.below(count + 1),
                    prefix: format!("b{step}-"),
                }
            }
            55..65 => {
                let mut groups = vec![Vec::new(), Vec::new()];
                for i in 0..n {
                    groups[rng.below(2)].push(i);
                }
                Op::Partition(groups)
            }
            65..77 => Op::Heal,
            77..82 => {
                offline.insert(node);
                Op::Offline(node)
            }
            82..87 => {
                offline.remove(&node);
                Op::Online(node)
            }
            87..92 if !down.contains(&node) => {
                down.insert(node);
                Op::Crash(node)
            }
            92..98 => match down.iter().next().copied() {
                Some(d) => {
                    down.remove(&d);
                    Op::Restart(d)
                }
                None => Op::Heal,
            },
            98.. if !revoked && node != 0 => {
                revoked = true;
                Op::Revoke { by: 0, peer: node }
            }
            _ => Op::Heal,
        };
        ops.push(op);
    }
    ops
}

/// Each node's clock skew in milliseconds for `seed`: a pure function of the seed and the
/// settings.
pub fn skews(seed: u64, config: &SoakConfig) -> Vec<i64> {
    let mut rng = SplitMix64::new(seed ^ 0x736b_6577);
    let max = config.max_skew_ms.max(0);
    (0..config.nodes.max(2))
        .map(|_| {
            let span = usize::try_from(2 * max + 1).unwrap_or(1);
            rng.below(span) as i64 - max
        })
        .collect()
}

/// A run that broke an invariant (or could not be carried out).
#[derive(Debug, Clone)]
pub struct SoakFailure {
    /// The operation after which the check failed (`ops.len()`: the final check).
    pub step: usize,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for SoakFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "after step {}: {}", self.step, self.reason)
    }
}

/// What a run that kept every invariant did.
#[derive(Debug, Clone, Default)]
pub struct SoakRun {
    /// Invariant checks made (one per heal, one at the end).
    pub checks: u64,
    /// Writes acknowledged.
    pub acked: u64,
    /// Nodes killed.
    pub crashes: u64,
    /// Seconds the checks waited for convergence, in all (wall clock).
    pub converge_s: f64,
    /// The same on the simulation's clock.
    pub sim_converge_s: f64,
    /// Seconds the run took on the simulation's clock.
    pub sim_s: f64,
    /// What the network carried (the same seed gives the same trace).
    pub trace: lattice_net::TraceDigest,
    /// What moved.
    pub metrics: SimMetrics,
}

/// What the scenario wrote and what must hold of it.
#[derive(Default)]
struct Model {
    /// Every value written to each key (values are unique: they name their step).
    written: BTreeMap<String, Vec<Write>>,
    /// The node that revoked, and the nodes it revoked.
    revoker: Option<usize>,
    revoked: BTreeSet<usize>,
}

struct Write {
    value: String,
    author: usize,
    acked: bool,
    /// Written by a node after it was revoked.
    after_revoke: bool,
}

impl Model {
    fn wrote(&mut self, author: usize, key: &str, value: &str, acked: bool) {
        self.written
            .entry(key.to_string())
            .or_default()
            .push(Write {
                value: value.to_string(),
                author,
                acked,
                after_revoke: self.revoked.contains(&author),
            });
    }

    /// What is wrong with `state`, the items a member holds, when `held` are the reachable
    /// members (which agree with each other).
    fn wrong(&self, state: &BTreeMap<String, String>, held: &[usize]) -> Option<String> {
        // The revocation has reached every member once its author is among them.
        let revocation_known = self.revoker.is_some_and(|r| held.contains(&r));
        for (key, writes) in &self.written {
            match state.get(key) {
                Some(v) => match writes.iter().find(|w| &w.value == v) {
                    None => return Some(format!("{key} holds {v}, never written")),
                    Some(w) if w.after_revoke && revocation_known => {
                        return Some(format!(
                            "{key}={v}, written by node {} after its revocation, is projected",
                            w.author
                        ));
                    }
                    Some(_) => {}
                },
                None => {
                    if let Some(w) = writes.iter().find(|w| {
                        w.acked && held.contains(&w.author) && !self.revoked.contains(&w.author)
                    }) {
                        return Some(format!(
                            "acknowledged put {key}={} by node {} is lost",
                            w.value, w.author
                        ));
                    }
                }
            }
        }
        None
    }
}

/// Runs `ops` (from [`generate`], or a part of them) on `config.nodes` fresh nodes under
/// `dir`, checking the invariants after every [`Op::Heal`] and at the end (after every node
/// is brought back); `modules` is a folder of compiled built-in guests
/// ([`crate::compile_builtins`]).
///
/// # Errors
/// The first broken invariant, or a step that failed outright.
pub async fn run_ops(
    seed: u64,
    ops: &[Op],
    config: &SoakConfig,
    dir: &Path,
    modules: &Path,
) -> Result<SoakRun, SoakFailure> {
    let setup = |e: SimError| SoakFailure {
        step: 0,
        reason: format!("setting up: {e}"),
    };
    let mut sim = Sim::new(seed, config.network.clone(), dir);
    sim.use_modules(modules.to_path_buf());
    let n = config.nodes.max(2);
    for skew in skews(seed, config) {
        sim.add_node_skewed(skew).await.map_err(setup)?;
    }
    let store = sim.create_store(0, "kv").await.map_err(setup)?;
    for joiner in 1..n {
        sim.join(0, joiner, &store).await.map_err(setup)?;
    }
    let mut run = Runner {
        sim,
        store,
        model: Model::default(),
        outcome: SoakRun::default(),
        deadline: config.deadline,
    };
    let result = run.all(ops).await;
    run.outcome.metrics = run.sim.metrics();
    run.outcome.sim_s = run.sim.elapsed().as_secs_f64();
    run.outcome.trace = run.sim.trace();
    run.sim.shutdown().await;
    result.map(|()| run.outcome)
}

struct Runner {
    sim: Sim,
    store: StoreId,
    model: Model,
    outcome: SoakRun,
    deadline: Duration,
}

impl Runner {
    async fn all(&mut self, ops: &[Op]) -> Result<(), SoakFailure> {
        for (step, op) in ops.iter().enumerate() {
            let fail = |reason: String| SoakFailure { step, reason };
            self.op(op).await.map_err(|e| fail(format!("{op}: {e}")))?;
            self.sim.step().await;
            if *op == Op::Heal {
                self.check().await.map_err(fail)?;
            }
        }
        // Everyone back: every acknowledged write must be everywhere.
        let fail = |reason: String| SoakFailure {
            step: ops.len(),
            reason,
        };
        self.sim.heal();
        for node in 0..self.sim.len() {
            if self.sim.node(node).is_err() {
                self.sim
                    .restart(node)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
            }
            self.sim
                .set_online(node, true)
                .map_err(|e| fail(e.to_string()))?;
        }
        self.check().await.map_err(fail)
    }

    fn running(&self, node: usize) -> bool {
        self.sim.node(node).is_ok()
    }

    /// Carries out one operation; one that does not apply now (a put on a stopped node, a
    /// restart of a running one) is skipped, so any part of a sequence is a valid sequence.
    async fn op(&mut self, op: &Op) -> Result<(), SimError> {
        match op {
            Op::Put { node, key, value } => {
                if !self.running(*node) {
                    return Ok(());
                }
                let args = json!({"key": key, "value": value});
                let acked = self.sim.call(*node, &self.store, "put", args).await.is_ok();
                self.outcome.acked += u64::from(acked);
                self.model.wrote(*node, key, value, acked);
            }
            Op::Burst {
                node,
                count,
                crash_after,
                prefix,
            } => {
                if !self.running(*node) {
                    return Ok(());
                }
                self.burst(*node, *count, *crash_after, prefix).await?;
            }
            Op::Partition(groups) => {
                let groups: Vec<Vec<usize>> = groups
                    .iter()
                    .map(|g| g.iter().copied().filter(|i| *i < self.sim.len()).collect())
                    .collect();
                self.sim.partition(&groups)?;
            }
            Op::Heal => self.sim.heal(),
            Op::Offline(n) => self.sim.set_online(*n, false)?,
            Op::Online(n) => self.sim.set_online(*n, true)?,
            Op::Crash(n) => {
                if self.running(*n) {
                    self.sim.crash(*n).await?;
                    self.outcome.crashes += 1;
                }
            }
            Op::Restart(n) => {
                if !self.running(*n) {
                    self.sim.restart(*n).await?;
                }
            }
            Op::Revoke { by, peer } => {
                let first = self.model.revoker.is_none_or(|r| r == *by);
                if self.running(*by) && first && !self.model.revoked.contains(by) && by != peer {
                    self.sim.revoke(*by, &self.store, *peer).await?;
                    self.model.revoker = Some(*by);
                    self.model.revoked.insert(*peer);
                }
            }
        }
        Ok(())
    }

    /// Starts `count` puts on `node` at once and kills it after `crash_after` replies.
    async fn burst(
        &mut self,
        node: usize,
        count: usize,
        crash_after: usize,
        prefix: &str,
    ) -> Result<(), SimError> {
        let manager = self.sim.node(node)?.clone();
        let mut puts = JoinSet::new();
        for i in 0..count {
            let (manager, store) = (manager.clone(), self.store);
            let (key, value) = (format!("{prefix}{i}"), format!("burst-{node}-{i}"));
            puts.spawn(async move {
                let args = json!({"key": key, "value": value});
                let acked = manager.call(&store, "put", &args).await.is_ok();
                (key, value, acked)
            });
        }
        let mut replies = Vec::new();
        while replies.len() < crash_after {
            match puts.join_next().await {
                Some(Ok(reply)) => replies.push(reply),
                Some(Err(_)) | None => break,
            }
        }
        drop(manager);
        self.sim.crash(node).await?;
        self.outcome.crashes += 1;
        while let Some(reply) = puts.join_next().await {
            if let Ok(reply) = reply {
                replies.push(reply);
            }
        }
        for (key, value, acked) in replies {
            self.outcome.acked += u64::from(acked);
            self.model.wrote(node, &key, &value, acked);
        }
        Ok(())
    }

    /// The invariants on every reachable member (see the module docs).
    async fn check(&mut self) -> Result<(), String> {
        self.outcome.checks += 1;
        let took = self
            .sim
            .converge_or_explain(&self.store, self.deadline)
            .await
            .map_err(|e| e.to_string())?;
        self.outcome.converge_s += took.wall.as_secs_f64();
        self.outcome.sim_converge_s += took.sim.as_secs_f64();
        let held = self.sim.reachable(&self.store);
        for &node in &held {
            self.sim
                .node(node)
                .map_err(|e| e.to_string())?
                .verify_log(&self.store)
                .await
                .map_err(|e| format!("node {node}: {e}"))?;
            let state = self.sim.kv_items(node, &self.store).await?;
            if let Some(wrong) = self.model.wrong(&state, &held) {
                return Err(format!("node {node}: {wrong}"));
            }
        }
        Ok(())
    }
}

/// Cuts `ops` down to a shorter sequence that still fails (removing chunks, halving their
/// size), trying at most `attempts` runs; returns the shortest failing sequence found and
/// its failure. A run that passes keeps the chunk (the simulated network's timing varies
/// between runs, so a removal can look needed when it is not: the result is short, not
/// always shortest).
pub async fn shrink(
    seed: u64,
    ops: Vec<Op>,
    failure: SoakFailure,
    config: &SoakConfig,
    dir: &Path,
    modules: &Path,
    attempts: usize,
) -> (Vec<Op>, SoakFailure) {
    let mut best = (ops, failure);
    // Steps after the failing check cannot matter.
    best.0.truncate(best.1.step + 1);
    let mut tried = 0;
    let mut chunk = best.0.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < best.0.len() && tried < attempts {
            let mut candidate = best.0.clone();
            let end = (start + chunk).min(candidate.len());
            candidate.drain(start..end);
            tried += 1;
            let attempt = dir.join(format!("shrink-{tried}"));
            let result = run_ops(seed, &candidate, config, &attempt, modules).await;
            let _ = std::fs::remove_dir_all(&attempt);
            match result {
                Err(failure) => {
                    let mut candidate = candidate;
                    candidate.truncate(failure.step + 1);
                    best = (candidate, failure);
                }
                Ok(_) => start = end,
            }
        }
        if chunk == 1 || tried >= attempts {
            return best;
        }
        chunk = chunk.div_ceil(2);
    }
}

/// The outcome of one seed of a soak.
#[derive(Debug)]
pub struct SeedOutcome {
    /// The seed.
    pub seed: u64,
    /// Wall-clock seconds the seed took (shrinking not included).
    pub wall_s: f64,
    /// The run, or its failure with the shortest failing operations found.
    pub result: Result<SoakRun, (SoakFailure, Vec<Op>)>,
}

impl SeedOutcome {
    /// The outcome as one JSON object.
    pub fn to_json(&self) -> Value {
        match &self.result {
            Ok(run) => json!({
                "seed": self.seed,
                "ok": true,
                "wall_s": self.wall_s,
                "checks": run.checks,
                "acked": run.acked,
                "crashes": run.crashes,
                "converge_s": run.converge_s,
                "sim_converge_s": run.sim_converge_s,
                "sim_s": run.sim_s,
                "trace_events": run.trace.events,
                "trace_digest": run.trace.digest,
                "metrics": run.metrics,
            }),
            Err((failure, trace)) => json!({
                "seed": self.seed,
                "ok": false,
                "wall_s": self.wall_s,
                "failure": failure.to_string(),
                "trace": trace.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        }
    }
}

/// Runs one seed in a folder under `dir` (removed after), shrinking a failure with at most
/// `shrink_attempts` runs.
pub async fn soak_seed(
    seed: u64,
    config: &SoakConfig,
    dir: &Path,
    modules: &Path,
    shrink_attempts: usize,
) -> SeedOutcome {
    let started = Instant::now();
    let ops = generate(seed, config);
    let folder: PathBuf = dir.join(format!("seed-{seed}"));
    let result = run_ops(seed, &ops, config, &folder, modules).await;
    let _ = std::fs::remove_dir_all(&folder);
    let wall_s = started.elapsed().as_secs_f64();
    let result = match result {
        Ok(run) => Ok(run),
        Err(failure) => Err(if shrink_attempts == 0 {
            (failure, ops)
        } else {
            let (ops, failure) = shrink(
                seed,
                ops,
                failure,
                config,
                &folder,
                modules,
                shrink_attempts,
            )
            .await;
            let _ = std::fs::remove_dir_all(&folder);
            (failure, ops)
        }),
    };
    SeedOutcome {
        seed,
        wall_s,
        result,
    }
}
