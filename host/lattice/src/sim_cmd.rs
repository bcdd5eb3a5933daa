//! `lattice sim run`: a scenario script on whole simulated nodes, for one seed or many;
//! `lattice sim soak`: random operations and faults per seed, with invariants.

use std::time::Instant;

use anyhow::{Context as _, bail};
use lattice_sim::soak::{SoakConfig, soak_seed};
use serde_json::json;

use crate::cli::{SimRunArgs, SimSoakArgs};
use crate::output::Output;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub(crate) fn soak(args: SimSoakArgs, out: &Output) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&args.loss) {
        bail!("--loss must be in 0..1, not {}", args.loss);
    }
    let runtime = runtime()?;
    let dir = tempfile::tempdir()?;
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
    // Seeds run side by side: a simulated node mostly waits (timers, fsync).
    let config = std::sync::Arc::new(config);
    let (dir_path, modules) = (dir.path().to_path_buf(), std::sync::Arc::new(modules));
    let mut running = tokio::task::JoinSet::new();
    let mut next = seeds.start;
    loop {
        while (running.len() as u64) < args.jobs && next < seeds.end {
            let (config, dir, modules) = (config.clone(), dir_path.clone(), modules.clone());
            let (seed, shrink) = (next, args.shrink);
            running.spawn_on(
                async move { soak_seed(seed, &config, &dir, &modules, shrink).await },
                runtime.handle(),
            );
            next += 1;
        }
        let Some(outcome) = runtime.block_on(running.join_next()) else {
            break;
        };
        let outcome = outcome.context("a seed's task failed")?;
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
                    next = seeds.end;
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
    let runtime = runtime()?;
    let seeds = args.seeds.clone().unwrap_or(args.seed..args.seed + 1);
    let count = seeds.end - seeds.start;
    let mut failed = Vec::new();
    let started = std::time::Instant::now();
    for seed in seeds {
        let dir = tempfile::tempdir()?;
        let report =
            lattice_sim::run_scenario(&script, seed, dir.path(), runtime.handle().clone())?;
        let verdict = match &report.error {
            None => "converged".to_string(),
            Some(e) => format!("FAILED: {e}"),
        };
        out.record(
            &format!(
                "seed {seed}: {} nodes, {} writes, {verdict}; last convergence {:.2} s, wall {:.2} s",
                report.nodes, report.writes, report.converge_s, report.wall_s
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
