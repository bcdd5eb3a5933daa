//! Scenarios as [Rhai](https://rhai.rs) scripts: [`run_scenario`] gives a script the
//! simulation's operations as functions and reports what happened.
//!
//! Rhai is embedded Rust scripting with loops, conditionals and functions, no I/O of its own,
//! and an operation limit — a scenario can only do what the simulator offers. The functions
//! (node indices are integers, stores are their id strings):
//!
//! | function | effect |
//! | --- | --- |
//! | `network(loss, duplicate, delay_ms)` | gossip faults, from now on (any time) |
//! | `node()` | adds a node; returns its index |
//! | `node_skewed(ms)` | adds a node whose wall clock is `ms` off (ahead when positive) |
//! | `store(node, type)`, `child(node, parent, type)` | creates a store, a child store |
//! | `join(inviter, joiner, store)` | invite and join |
//! | `put(node, store, key, value)`, `get(node, store, key)` | a `kv` write and read (`()` when absent) |
//! | `increment(node, store, name)`, `count(node, store, name)` | a `counter` write and read |
//! | `offline(node)`, `online(node)` | take a node off the network, bring it back |
//! | `partition(groups)`, `heal()` | e.g. `partition([[0, 1], [2, 3]])` |
//! | `stop(node)`, `crash(node)`, `restart(node)` | a clean stop, a kill without the final flush, a start from disk |
//! | `revoke(node, store, peer)` | a revocation |
//! | `hostile(node)` | garbles everything the node sends from now on; it is held to no store's state |
//! | `bans()` | peers banned so far, over every node |
//! | `converge(store, seconds)` | waits until the members agree; returns the simulated seconds it took, fails the run when they do not |
//! | `rand(n)` | a number in `0..n` from the run's seed |

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lattice_log::SplitMix64;
use lattice_model::StoreId;
use rhai::{Array, Dynamic, Engine, EvalAltResult};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

use crate::{Sim, SimConfig, SimError, SimMetrics};

/// Longest a script may run, in Rhai operations (a guard against endless loops).
const MAX_OPERATIONS: u64 = 50_000_000;

/// What a scenario run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Nodes added.
    pub nodes: usize,
    /// Writes the script made (`put`, `increment`).
    pub writes: u64,
    /// Every `converge` succeeded and the script ran to its end.
    pub converged: bool,
    /// Wall-clock time of the whole run, in seconds.
    pub wall_s: f64,
    /// Seconds the last `converge` waited, on the wall.
    pub converge_s: f64,
    /// Seconds the last `converge` waited on the simulation's clock.
    pub sim_converge_s: f64,
    /// Seconds the whole run took on the simulation's clock.
    pub sim_s: f64,
    /// What the network carried, as a digest over every event: the same seed gives the
    /// same trace.
    pub trace: lattice_net::TraceDigest,
    /// The network's events as text, one per line (`<µs> <event> <from> <to> …`), when
    /// asked for ([`run_scenario_traced`]).
    pub trace_lines: Vec<String>,
    /// Of the last `converge`'s members, the share holding the most common state (100 when
    /// they converged).
    pub convergence_pct: f64,
    /// What moved: sessions, intentions, gossip, bytes.
    pub metrics: SimMetrics,
    /// Why the run failed, if it did (for a `kv` store that did not converge: the keys
    /// that differ, with each member's value).
    pub error: Option<String>,
}

impl Report {
    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "seed": self.seed,
            "nodes": self.nodes,
            "writes": self.writes,
            "converged": self.converged,
            "wall_s": self.wall_s,
            "converge_s": self.converge_s,
            "sim_converge_s": self.sim_converge_s,
            "sim_s": self.sim_s,
            "trace_events": self.trace.events,
            "trace_digest": self.trace.digest,
            "convergence_pct": self.convergence_pct,
            "metrics": self.metrics,
            "error": self.error,
        })
    }
}

/// The state a script's functions share.
struct Run {
    sim: Sim,
    rt: Arc<Runtime>,
    rng: SplitMix64,
    writes: u64,
    converge_s: f64,
    sim_converge_s: f64,
    convergence_pct: f64,
}

type Shared = Arc<Mutex<Run>>;
type Fallible<T> = Result<T, Box<EvalAltResult>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Run> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn fail(e: impl std::fmt::Display) -> Box<EvalAltResult> {
    e.to_string().into()
}

fn index(n: i64) -> Fallible<usize> {
    usize::try_from(n).map_err(|_| fail(format!("{n} is not a node index")))
}

fn store_id(text: &str) -> Fallible<StoreId> {
    StoreId::from_hex(text).map_err(|_| fail(format!("{text:?} is not a store id")))
}

/// Runs scenario `script` with the simulation's faults seeded by `seed` and the nodes' data
/// under `dir`, on a runtime of its own ([`crate::runtime`]: one thread, paused time), so
/// a seed gives the same run every time. Call it off any async runtime (it blocks on its
/// own for every operation).
///
/// # Errors
/// Only for a script that does not compile; a failure while it runs (an operation refused,
/// members that do not converge) is in the report.
pub fn run_scenario(script: &str, seed: u64, dir: &Path) -> Result<Report, SimError> {
    run_scenario_traced(script, seed, dir, 0)
}

/// As [`run_scenario`], keeping the text of the network's first `keep_trace` events in
/// [`Report::trace_lines`] (to find where two runs part).
///
/// # Errors
/// As [`run_scenario`].
pub fn run_scenario_traced(
    script: &str,
    seed: u64,
    dir: &Path,
    keep_trace: usize,
) -> Result<Report, SimError> {
    let start = Instant::now();
    let rt = Arc::new(crate::runtime().map_err(SimError::Runtime)?);
    let sim = Sim::new(seed, SimConfig::default(), dir);
    sim.network().keep_trace(keep_trace);
    let shared: Shared = Arc::new(Mutex::new(Run {
        sim,
        rt,
        rng: SplitMix64::new(seed),
        writes: 0,
        converge_s: 0.0,
        sim_converge_s: 0.0,
        convergence_pct: 100.0,
    }));
    let mut engine = Engine::new();
    engine.set_max_operations(MAX_OPERATIONS);
    engine.on_print(|text| tracing::info!(target: "scenario", "{text}"));
    engine.on_debug(|text, _, _| tracing::debug!(target: "scenario", "{text}"));
    register(&mut engine, &shared);
    let ast = engine
        .compile(script)
        .map_err(|e| SimError::Script(e.to_string()))?;
    let outcome = engine.run_ast(&ast);
    let mut run = lock(&shared);
    let rt = run.rt.clone();
    // Read on the runtime: outside it, tokio's clock is the wall's.
    let sim_s = rt.block_on(async {
        let sim_s = run.sim.elapsed().as_secs_f64();
        run.sim.shutdown().await;
        sim_s
    });
    Ok(Report {
        seed,
        nodes: run.sim.len(),
        writes: run.writes,
        converged: outcome.is_ok(),
        wall_s: start.elapsed().as_secs_f64(),
        converge_s: run.converge_s,
        sim_converge_s: run.sim_converge_s,
        sim_s,
        trace: run.sim.trace(),
        trace_lines: run.sim.network().trace_events(),
        convergence_pct: run.convergence_pct,
        metrics: run.sim.metrics(),
        error: outcome.err().map(|e| e.to_string()),
    })
}

/// Runs `f` with the simulation, blocking on its runtime.
fn with<T>(shared: &Shared, f: impl AsyncFnOnce(&mut Run) -> Result<T, SimError>) -> Fallible<T> {
    let mut run = lock(shared);
    let rt = run.rt.clone();
    rt.block_on(async {
        let out = f(&mut *run).await;
        run.sim.step().await;
        out
    })
    .map_err(fail)
}

/// Calls `method` of `store` on `node` with `args`; a `write` is counted in the report.
fn call(
    shared: &Shared,
    node: i64,
    store: &str,
    method: &str,
    args: Value,
    write: bool,
) -> Fallible<Value> {
    let (node, store) = (index(node)?, store_id(store)?);
    with(shared, async |r| {
        let got = r.sim.call(node, &store, method, args).await?;
        if write {
            r.writes += 1;
        }
        Ok(got)
    })
}

fn register(engine: &mut Engine, shared: &Shared) {
    let s = shared.clone();
    engine.register_fn(
        "network",
        move |loss: f64, duplicate: f64, delay_ms: i64| -> Fallible<()> {
            if !(0.0..=1.0).contains(&loss) || !(0.0..=1.0).contains(&duplicate) || delay_ms < 0 {
                return Err(fail(format!(
                    "network({loss}, {duplicate}, {delay_ms}): loss and duplication are probabilities, the delay milliseconds"
                )));
            }
            let config = SimConfig {
                loss,
                duplicate,
                max_delay: Duration::from_millis(u64::try_from(delay_ms).unwrap_or(0)),
            };
            lock(&s).sim.set_faults(config);
            Ok(())
        },
    );
    let s = shared.clone();
    engine.register_fn("node", move || -> Fallible<i64> {
        with(&s, async |r| r.sim.add_node().await).map(|n| n as i64)
    });
    let s = shared.clone();
    engine.register_fn("node_skewed", move |skew_ms: i64| -> Fallible<i64> {
        with(&s, async |r| r.sim.add_node_skewed(skew_ms).await).map(|n| n as i64)
    });
    let s = shared.clone();
    engine.register_fn("store", move |node: i64, kind: &str| -> Fallible<String> {
        let node = index(node)?;
        with(&s, async |r| r.sim.create_store(node, kind).await).map(|id| id.to_string())
    });
    let s = shared.clone();
    engine.register_fn(
        "child",
        move |node: i64, parent: &str, kind: &str| -> Fallible<String> {
            let (node, parent) = (index(node)?, store_id(parent)?);
            with(&s, async |r| r.sim.create_child(node, &parent, kind).await)
                .map(|id| id.to_string())
        },
    );
    let s = shared.clone();
    engine.register_fn(
        "join",
        move |inviter: i64, joiner: i64, store: &str| -> Fallible<()> {
            let (inviter, joiner, store) = (index(inviter)?, index(joiner)?, store_id(store)?);
            with(&s, async |r| r.sim.join(inviter, joiner, &store).await)
        },
    );
    let s = shared.clone();
    engine.register_fn(
        "put",
        move |node: i64, store: &str, key: &str, value: &str| -> Fallible<()> {
            let args = json!({ "key": key, "value": value });
            call(&s, node, store, "put", args, true).map(drop)
        },
    );
    let s = shared.clone();
    engine.register_fn(
        "get",
        move |node: i64, store: &str, key: &str| -> Fallible<Dynamic> {
            let got = call(&s, node, store, "get", json!({ "key": key }), false)?;
            Ok(match got["value"].as_str() {
                Some(v) => Dynamic::from(v.to_string()),
                None => Dynamic::UNIT,
            })
        },
    );
    let s = shared.clone();
    engine.register_fn(
        "increment",
        move |node: i64, store: &str, name: &str| -> Fallible<()> {
            call(&s, node, store, "increment", json!({ "name": name }), true).map(drop)
        },
    );
    let s = shared.clone();
    engine.register_fn(
        "count",
        move |node: i64, store: &str, name: &str| -> Fallible<i64> {
            let got = call(&s, node, store, "get", json!({ "name": name }), false)?;
            Ok(got["value"].as_i64().unwrap_or(0))
        },
    );
    for (name, online) in [("offline", false), ("online", true)] {
        let s = shared.clone();
        engine.register_fn(name, move |node: i64| -> Fallible<()> {
            let node = index(node)?;
            lock(&s).sim.set_online(node, online).map_err(fail)
        });
    }
    let s = shared.clone();
    engine.register_fn("partition", move |groups: Array| -> Fallible<()> {
        let groups = groups
            .into_iter()
            .map(|g| {
                g.into_typed_array::<i64>()
                    .map_err(|_| fail("partition() takes arrays of node indices"))?
                    .into_iter()
                    .map(index)
                    .collect::<Fallible<Vec<usize>>>()
            })
            .collect::<Fallible<Vec<Vec<usize>>>>()?;
        lock(&s).sim.partition(&groups).map_err(fail)
    });
    let s = shared.clone();
    engine.register_fn("heal", move || lock(&s).sim.heal());
    let s = shared.clone();
    engine.register_fn("stop", move |node: i64| -> Fallible<()> {
        let node = index(node)?;
        with(&s, async |r| r.sim.stop(node).await)
    });
    let s = shared.clone();
    engine.register_fn("crash", move |node: i64| -> Fallible<()> {
        let node = index(node)?;
        with(&s, async |r| r.sim.crash(node).await)
    });
    let s = shared.clone();
    engine.register_fn("restart", move |node: i64| -> Fallible<()> {
        let node = index(node)?;
        with(&s, async |r| r.sim.restart(node).await)
    });
    let s = shared.clone();
    engine.register_fn("hostile", move |node: i64| -> Fallible<()> {
        let node = index(node)?;
        lock(&s).sim.set_hostile(node).map_err(fail)
    });
    let s = shared.clone();
    engine.register_fn("bans", move || -> i64 {
        i64::try_from(lock(&s).sim.metrics().bans).unwrap_or(i64::MAX)
    });
    let s = shared.clone();
    engine.register_fn(
        "revoke",
        move |node: i64, store: &str, peer: i64| -> Fallible<()> {
            let (node, store, peer) = (index(node)?, store_id(store)?, index(peer)?);
            with(&s, async |r| r.sim.revoke(node, &store, peer).await)
        },
    );
    let s = shared.clone();
    engine.register_fn(
        "converge",
        move |store: &str, seconds: i64| -> Fallible<f64> {
            let store = store_id(store)?;
            let deadline = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
            with(&s, async |r| {
                match r.sim.converge_or_explain(&store, deadline).await {
                    Ok(took) => {
                        r.converge_s = took.wall.as_secs_f64();
                        r.sim_converge_s = took.sim.as_secs_f64();
                        r.convergence_pct = 100.0;
                        Ok(r.sim_converge_s)
                    }
                    Err(e) => {
                        r.convergence_pct = r.sim.agreement(&store).await;
                        Err(e)
                    }
                }
            })
        },
    );
    let s = shared.clone();
    engine.register_fn("rand", move |n: i64| -> i64 {
        lock(&s).rng.below(usize::try_from(n).unwrap_or(0)) as i64
    });
}
