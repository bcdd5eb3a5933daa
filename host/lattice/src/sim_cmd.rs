//! `lattice sim run`: a scenario script on whole simulated nodes, for one seed or many;
//! `lattice sim soak`: random operations and faults per seed, with invariants.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use lattice_sim::soak::{SoakConfig, soak_seed};
use serde_json::json;

use crate::cli::{SimRunArgs, SimSoakArgs};
use crate::output::Output;

/// A temporary folder for simulated nodes' data: in `dir`, or in memory when the machine
/// has /dev/shm (see `--dir`).
fn sim_tempdir(dir: Option<&std::path::Path>) -> anyhow::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    let base = match dir {
        Some(d) => d.to_path_buf(),
        None if shm.is_dir() => shm.to_path_buf(),
        None => std::env::temp_dir(),
    };
    let made = tempfile::Builder::new()
        .prefix("lattice-sim-")
        .tempdir_in(&base);
    match made {
        Ok(t) => Ok(t),
        // /dev/shm not writable here: the system's temp dir.
        Err(_) if dir.is_none() => Ok(tempfile::tempdir()?),
        Err(e) => Err(e).with_context(|| format!("making a folder in {}", base.display())),
    }
}

pub(crate) fn soak(args: SimSoakArgs, out: &Output) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&args.loss) {
        bail!("--loss must be in 0..1, not {}", args.loss);
    }
    let dir = sim_tempdir(args.dir.as_deref())?;
    out.progress("compiling the built-in guests once for every seed…");
    let modules = lattice_sim::compile_builtins(&dir.path().join("modules"))?;
    let defaults = SoakConfig::default();
    let config = SoakConfig {
        nodes: args.nodes as usize,
        steps: args.steps,
        max_skew_ms: args.max_skew_ms,
        network: lattice_sim::SimConfig {
            loss: args.loss,
            ..defaults.network
        },
        ..defaults
    };
    let seeds = args.seeds.clone();
    let count = seeds.end - seeds.start;
    let every = (count / 20).max(1);
    let started = Instant::now();
    let (mut passed, mut failed, mut checks, mut crashes, mut acked) = (0u64, Vec::new(), 0, 0, 0);
    // Seeds run side by side, each on a thread with its own single-threaded runtime.
    let next = AtomicU64::new(seeds.start);
    let stop = AtomicBool::new(false);
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        for _ in 0..args.jobs.max(1) {
            let (done_tx, next, stop) = (done_tx.clone(), &next, &stop);
            let (config, dir, modules) = (&config, dir.path(), &modules);
            scope.spawn(move || {
                let runtime = match lattice_sim::runtime() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = done_tx.send(Err(e));
                        return;
                    }
                };
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= seeds.end || stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let outcome =
                        runtime.block_on(soak_seed(seed, config, dir, modules, args.shrink));
                    if done_tx.send(Ok(outcome)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        for outcome in done_rx {
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(e) => {
                    // The other workers stop after their seed.
                    stop.store(true, Ordering::SeqCst);
                    return Err(e).context("building a seed's runtime");
                }
            };
            let seed = outcome.seed;
            match &outcome.result {
                Ok(run) => {
                    passed += 1;
                    checks += run.checks;
                    crashes += run.crashes;
                    acked += run.acked;
                    if out.json() {
                        out.record("", outcome.to_json());
                    }
                }
                Err((failure, trace)) => {
                    failed.push(seed);
                    let steps: Vec<String> = trace.iter().map(|op| format!("  {op}")).collect();
                    out.record(
                    &format!(
                        "seed {seed} FAILED {failure}\nshortest failing sequence found ({} steps; rerun: lattice sim soak --seeds {seed}..{} --nodes {} --steps {}):\n{}",
                        trace.len(),
                        seed + 1,
                        args.nodes,
                        args.steps,
                        steps.join("\n")
                    ),
                    outcome.to_json(),
                );
                    if args.fail_fast {
                        stop.store(true, Ordering::SeqCst);
                    }
                }
            }
            let done = passed + failed.len() as u64;
            if done.is_multiple_of(every) || done == count {
                out.progress(&format!(
                    "{done}/{count} seeds, {} failed, {:.0} s",
                    failed.len(),
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        Ok(())
    })?;
    let wall = started.elapsed();
    out.record(
        &format!(
            "{passed} of {count} seeds kept every invariant in {:.1} s ({:.2} s a seed; {checks} checks, {acked} acknowledged writes, {crashes} kills){}",
            wall.as_secs_f64(),
            wall.as_secs_f64() / (passed + failed.len() as u64).max(1) as f64,
            if failed.is_empty() {
                String::new()
            } else {
                format!("; failed: {failed:?}")
            }
        ),
        json!({"seeds": count, "passed": passed, "failed": failed, "checks": checks,
            "acked": acked, "crashes": crashes, "nodes": args.nodes, "steps": args.steps,
            "wall_s": wall.as_secs_f64()}),
    );
    if !failed.is_empty() {
        bail!("invariants broken for seeds {failed:?}");
    }
    Ok(())
}

pub(crate) fn run(args: SimRunArgs, out: &Output) -> anyhow::Result<()> {
    let script = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("reading the scenario {}", args.scenario.display()))?;
    let seeds = args.seeds.clone().unwrap_or(args.seed..args.seed + 1);
    let count = seeds.end - seeds.start;
    let mut failed = Vec::new();
    let started = std::time::Instant::now();
    for seed in seeds {
        let dir = sim_tempdir(args.dir.as_deref())?;
        let keep = if args.trace.is_some() { usize::MAX } else { 0 };
        let report = lattice_sim::run_scenario_traced(&script, seed, dir.path(), keep)?;
        if let Some(path) = &args.trace {
            let path = if count > 1 {
                path.with_extension(format!("{seed}"))
            } else {
                path.clone()
            };
            let mut text = report.trace_lines.join("\n");
            text.push('\n');
            std::fs::write(&path, text)
                .with_context(|| format!("writing the trace to {}", path.display()))?;
        }
        let verdict = match &report.error {
            None => "converged".to_string(),
            Some(e) => format!("FAILED: {e}"),
        };
        out.record(
            &format!(
                "seed {seed}: {} nodes, {} writes, {verdict}; last convergence {:.3} s simulated ({:.2} s wall); run {:.3} s simulated, {:.2} s wall; trace {} events {}",
                report.nodes,
                report.writes,
                report.sim_converge_s,
                report.converge_s,
                report.sim_s,
                report.wall_s,
                report.trace.events,
                &report.trace.digest[..16]
            ),
            report.to_json(),
        );
        if !report.converged {
            failed.push(seed);
        }
    }
    if count > 1 {
        out.record(
            &format!(
                "{} of {count} seeds passed in {:.1} s{}",
                count - failed.len() as u64,
                started.elapsed().as_secs_f64(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!("; failed: {failed:?}")
                }
            ),
            json!({"seeds": count, "passed": count - failed.len() as u64, "failed": failed,
                "wall_s": started.elapsed().as_secs_f64()}),
        );
    }
    if !failed.is_empty() {
        bail!("the scenario failed for seeds {failed:?}");
    }
    Ok(())
}
