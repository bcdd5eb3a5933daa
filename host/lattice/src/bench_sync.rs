//! `lattice bench sync`: reconciliation and clone figures between in-process nodes over the
//! simulated network or real iroh on loopback.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lattice_log::{Incoming, Log, SyntheticDag};
use lattice_model::SignedIntention;
use lattice_net::{Mesh, MeshTransport, ReplicatorConfig, SimConfig, SimNetwork};
use serde_json::json;

use crate::cli::BenchSyncArgs;
use crate::output::Output;

fn feed(log: &Log, items: &[SignedIntention]) -> anyhow::Result<()> {
    for chunk in items.chunks(4096) {
        let incoming = chunk
            .iter()
            .map(|s| Incoming::new(s.as_bytes().to_vec()))
            .collect();
        log.ingest(incoming)?;
    }
    log.settle()?;
    Ok(())
}

pub(crate) fn run(args: BenchSyncArgs, out: &Output) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.diff) {
        bail!(
            "--diff must be a fraction between 0 and 1 (got {})",
            args.diff
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args, out))
}

async fn run_async(args: BenchSyncArgs, out: &Output) -> anyhow::Result<()> {
    let n = usize::try_from(args.count)?;
    let unique = (args.diff * n as f64).round() as usize;
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    out.progress(&format!(
        "lattice bench sync: {n} shared intentions, ~{unique} unique to each side, over {}, data in {}",
        args.transport,
        tmp.path().display()
    ));
    // Four authors with plain chains: the first n are shared; later ones go to side A when
    // their author is even and to side B when odd, so both sides stay causally complete.
    let mut dag = SyntheticDag::new(0xB5, 4, 0, 100);
    let shared: Vec<SignedIntention> = (0..n).map(|_| dag.next_intention()).collect();
    let keys = dag.keys();
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    while only_a.len() < unique || only_b.len() < unique {
        let s = dag.next_intention();
        let author = s.intention().author();
        let even = keys.iter().position(|k| k.public() == author).unwrap_or(0) % 2 == 0;
        match (even, only_a.len() < unique, only_b.len() < unique) {
            (true, true, _) => only_a.push(s),
            (false, _, true) => only_b.push(s),
            // That author's side is full: its later intentions would lack this one.
            _ => break,
        }
    }
    let transport = match args.transport.as_str() {
        "sim" => MeshTransport::Sim(SimNetwork::new(1, SimConfig::default())),
        _ => MeshTransport::Iroh,
    };
    let config = ReplicatorConfig {
        auto_sync: false,
        ..ReplicatorConfig::default()
    };
    let mut mesh = Mesh::start(tmp.path(), 2, transport, config, dag.genesis().clone()).await?;
    out.progress("loading both sides");
    feed(&mesh.nodes[0].log, &shared)?;
    feed(&mesh.nodes[0].log, &only_a)?;
    feed(&mesh.nodes[1].log, &shared)?;
    feed(&mesh.nodes[1].log, &only_b)?;

    out.progress("reconciling");
    let store = mesh.store_id();
    let peer = mesh.nodes[1].id();
    let started = Instant::now();
    let report = mesh.nodes[0].replicator.sync(&store, &peer).await?;
    let reconcile = started.elapsed();
    mesh.converged(&[0, 1], Duration::from_secs(60))
        .await
        .context("the two sides differ after reconciling")?;

    out.progress("cloning into an empty node");
    let joiner = mesh.add_empty_node().await?;
    let source = [mesh.nodes[0].id()];
    let total = mesh.nodes[0].digest()?.0;
    let started = Instant::now();
    let (_, clone) = mesh.nodes[joiner]
        .replicator
        .bootstrap(&mesh.nodes[joiner].log, &source, |_| {})
        .await?;
    let clone_time = started.elapsed();
    if mesh.nodes[joiner].digest()? != mesh.nodes[0].digest()? {
        bail!("the clone differs from its source");
    }
    mesh.stop().await;

    let reconcile_ms = reconcile.as_secs_f64() * 1000.0;
    let clone_per_s = total as f64 / clone_time.as_secs_f64();
    out.record(
        &format!(
            "reconcile: {} + {} unique of {} shared in {} round trips, {reconcile_ms:.0} ms, \
             {} bytes sent, {} bytes received\n\
             clone: {total} intentions in {:.0} ms = {clone_per_s:.0}/s ({} bytes received)",
            only_a.len(),
            only_b.len(),
            n,
            report.rounds,
            report.bytes_sent,
            report.bytes_received,
            clone_time.as_secs_f64() * 1000.0,
            clone.bytes_received,
        ),
        json!({
            "transport": args.transport,
            "count": n,
            "diff": args.diff,
            "unique_a": only_a.len(),
            "unique_b": only_b.len(),
            "rounds": report.rounds,
            "bytes_sent": report.bytes_sent,
            "bytes_received": report.bytes_received,
            "reconcile_ms": reconcile_ms,
            "fetched": report.need,
            "pushed": report.sent,
            "clone_count": total,
            "clone_ms": clone_time.as_secs_f64() * 1000.0,
            "clone_per_s": clone_per_s,
            "clone_bytes_received": clone.bytes_received,
        }),
    );
    Ok(())
}
