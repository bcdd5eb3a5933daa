//! `lattice sim run`: a scenario script on whole simulated nodes, for one seed or many.

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::cli::SimRunArgs;
use crate::output::Output;

pub(crate) fn run(args: SimRunArgs, out: &Output) -> anyhow::Result<()> {
    let script = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("reading the scenario {}", args.scenario.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
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
