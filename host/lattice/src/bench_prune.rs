//! `lattice bench prune`: one kv store on three embedded nodes, `--writes` puts over `--keys`
//! keys spread across them and exchanged as they go; then a prune cut every member
//! acknowledges, and a prune pass on the first node. Reports disk before and after, the
//! state's size, the longest prune step (how long a write can wait behind pruning), and how
//! long a new peer takes to bootstrap from the full history and, after pruning, from a
//! snapshot (the state at the epoch plus what the pruned node holds). Last, what a user
//! gets: real daemons on the nodes' data directories, and a fresh node joining through the
//! API over iroh loopback, once from an unpruned member (its history) and once from the
//! pruned one (a snapshot).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lattice_log::{Incoming, IngestError};
use lattice_node::{DataDir, Node, Store};
use lattice_proto::v1;
use serde_json::{Value, json};

use crate::bench_daemon::{Daemon, invite_and_join};
use crate::cli::BenchPruneArgs;
use crate::output::Output;

/// Puts per write run.
const RUN: usize = 256;
/// Intentions copied per ingest.
const COPY: usize = 4096;

/// Hands `take` what `from` witnessed after `cursor`, in witness order (a causal order, so
/// nothing floats where it lands), a batch at a time; returns the new cursor.
fn each_batch(
    from: &Store,
    mut cursor: u64,
    mut take: impl FnMut(Vec<Incoming>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    loop {
        let batch = from.log().reader().witnessed(cursor + 1, COPY)?;
        let Some(&(last, _)) = batch.last() else {
            return Ok(cursor);
        };
        take(
            batch
                .iter()
                .map(|(_, s)| Incoming::new(s.as_bytes().to_vec()))
                .collect(),
        )?;
        cursor = last;
    }
}

/// Copies what `from` witnessed after `cursor` into `to` and projects it.
fn copy(from: &Store, to: &mut Store, cursor: u64) -> anyhow::Result<u64> {
    let cursor = each_batch(from, cursor, |items| {
        for r in to.log().ingest(items)? {
            match r {
                Ok(_) | Err(IngestError::Pruned { .. }) => {}
                Err(e) => bail!("copying between nodes: {e}"),
            }
        }
        Ok(())
    })?;
    to.project()?;
    Ok(cursor)
}

/// Copies between every ordered pair, remembering how far each pair got.
fn exchange(
    stores: &mut [Store],
    cursors: &mut HashMap<(usize, usize), u64>,
) -> anyhow::Result<()> {
    for from in 0..stores.len() {
        for to in 0..stores.len() {
            if from == to {
                continue;
            }
            let cursor = cursors.get(&(from, to)).copied().unwrap_or(0);
            let (src, dst) = if from < to {
                let (a, b) = stores.split_at_mut(to);
                (&a[from], &mut b[0])
            } else {
                let (a, b) = stores.split_at_mut(from);
                (&b[0], &mut a[to])
            };
            let next = copy(src, dst, cursor)?;
            cursors.insert((from, to), next);
        }
    }
    Ok(())
}

/// A replica of `source` on `node`: every intention `source` witnessed, then opened (and
/// projected as it opens).
fn replicate(node: &Node, source: &Store) -> anyhow::Result<Store> {
    node.resolve_type("kv")?;
    let log = node.open_log(source.id())?;
    each_batch(source, 0, |items| {
        for r in log.ingest(items)? {
            r?;
        }
        Ok(())
    })?;
    log.close()?;
    Ok(node.open_store(source.id())?)
}

/// A join through the daemons' API, timed from the join request to its last answer.
struct ApiJoin {
    seconds: f64,
    fetched: u64,
    snapshot_bytes: u64,
}

/// Reads `key` of `store` through a daemon's API.
async fn api_get(daemon: &mut Daemon, store: &str, key: &str) -> anyhow::Result<Value> {
    let reply = daemon
        .client
        .store
        .call(v1::CallRequest {
            store: store.to_string(),
            method: "get".into(),
            args_json: json!({"key": key}).to_string(),
            words: Vec::new(),
        })
        .await
        .with_context(|| format!("get {key}"))?
        .into_inner();
    Ok(serde_json::from_str(&reply.json)?)
}

/// Starts daemons on `inviter` (a node of `store`) and `joiner` (fresh), has the first invite
/// the second and the second join through the API, and checks that both read `key` alike.
async fn join_through_api(
    inviter: &Path,
    joiner: &Path,
    store: &str,
    key: &str,
) -> anyhow::Result<ApiJoin> {
    let mut a = Daemon::start(inviter).await?;
    let mut b = Daemon::start(joiner).await?;
    let (seconds, done) = invite_and_join(&mut a, &mut b, store).await?;
    let (there, here) = (
        api_get(&mut a, store, key).await?,
        api_get(&mut b, store, key).await?,
    );
    if there != here || here["value"].is_null() {
        bail!("the joined node reads {here} for {key}, the inviter {there}");
    }
    a.stop().await?;
    b.stop().await?;
    Ok(ApiJoin {
        seconds,
        fetched: done.fetched,
        snapshot_bytes: done.snapshot_bytes,
    })
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

pub(crate) fn run(args: BenchPruneArgs, out: &Output) -> anyhow::Result<()> {
    let writes = usize::try_from(args.writes)?;
    let keys = usize::try_from(args.keys)?;
    let tmp = tempfile::tempdir()?;
    out.progress(&format!(
        "lattice bench prune: {writes} puts over {keys} keys on 3 nodes, data in {}",
        tmp.path().display()
    ));
    let dirs: Vec<DataDir> = (0..7)
        .map(|i| DataDir::new(tmp.path().join(format!("node{i}"))))
        .collect();
    let nodes: Vec<Node> = dirs[..3]
        .iter()
        .map(|d| Node::open(d.clone()))
        .collect::<Result<_, _>>()?;
    let mut a = nodes[0].create_store(nodes[0].resolve_type("kv")?, "bench")?;
    let id = a.id();
    for n in &nodes[1..] {
        a.system_call(
            "set-peer-status",
            &json!({"peer": n.key().public().to_string(), "status": "active"}),
        )?;
    }
    let mut stores = vec![];
    for n in &nodes[1..] {
        stores.push(replicate(n, &a)?);
    }
    stores.insert(0, a);
    let mut cursors = HashMap::new();
    exchange(&mut stores, &mut cursors)?;

    // The writes, a run at a time on each node in turn, exchanged every few runs.
    let start = Instant::now();
    let mut done = 0usize;
    let mut reported = Instant::now();
    while done < writes {
        for store in stores.iter_mut() {
            let n = RUN.min(writes - done);
            if n == 0 {
                break;
            }
            let calls: Vec<(String, serde_json::Value)> = (done..done + n)
                .map(|i| {
                    (
                        "put".to_string(),
                        json!({"key": format!("key{:06}", i % keys), "value": format!("value {i}")}),
                    )
                })
                .collect();
            for r in store.write_run(&calls) {
                r?;
            }
            done += n;
        }
        if done.is_multiple_of(RUN * 3 * 8) || done >= writes {
            exchange(&mut stores, &mut cursors)?;
        }
        if reported.elapsed() >= Duration::from_secs(5) {
            reported = Instant::now();
            out.progress(&format!("  {done} of {writes} puts written"));
        }
    }
    let write_s = start.elapsed().as_secs_f64();

    // A prune cut on the first node, acknowledged by the others, final everywhere.
    stores[0].request_prune_cut()?;
    for _ in 0..3 {
        exchange(&mut stores, &mut cursors)?;
    }
    let epoch = stores[0].epoch()?.context("no epoch")?;
    if !epoch.finalized {
        bail!("the prune cut's epoch did not become final: {epoch:?}");
    }
    stores[0].flush()?;
    let before = stores[0].status()?;
    let log_path = dirs[0].log_path(&id);
    let log_bytes_before = file_size(&log_path);
    let intentions_before = stores[0].log().reader().witnessed_count()?;

    // A new peer bootstraps from the whole history (ingest every intention, project).
    let start = Instant::now();
    let joiner = Node::open(dirs[3].clone())?;
    let joined = replicate(&joiner, &stores[0])?;
    let bootstrap_s_before = start.elapsed().as_secs_f64();
    if joined.state_digest()? != stores[0].state_digest()? {
        bail!("the bootstrapped peer's state differs");
    }

    // The prune pass, step by step as the store actor runs it between write runs.
    let digest = stores[0].state_digest()?;
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let start = Instant::now();
    stores[0].begin_prune(Some(tx))?;
    let mut max_step = Duration::ZERO;
    let mut steps = 0u64;
    while stores[0].is_pruning() {
        let t = Instant::now();
        stores[0].prune_step();
        max_step = max_step.max(t.elapsed());
        steps += 1;
    }
    let prune_s = start.elapsed().as_secs_f64();
    let report = rx.try_recv().context("the prune pass did not report")??;
    if let Some(why) = &report.not_now {
        bail!("nothing was pruned: {why}");
    }
    if stores[0].state_digest()? != digest {
        bail!("pruning changed the state");
    }
    let intentions_after = stores[0].log().reader().witnessed_count()?;

    // Reopening compacts the file.
    let first = stores.remove(0);
    first.close()?;
    let start = Instant::now();
    let reopened = nodes[0].open_store(id)?;
    let reopen_s = start.elapsed().as_secs_f64();
    let log_bytes_after = file_size(&log_path);
    if reopened.state_digest()? != digest {
        bail!("the reopened store's state differs");
    }
    let state_bytes = before.state_bytes;

    // A new peer joins the pruned store from a snapshot: the state at the epoch, the floor
    // and what the pruned node holds; it projects only the tail.
    let mut reopened = reopened;
    let start = Instant::now();
    let snapshot = reopened.snapshot()?;
    let snapshot_bytes = snapshot.size();
    let late = Node::open(dirs[4].clone())?;
    let joined = late.store_from_snapshot(&snapshot)?;
    let bootstrap_s_after = start.elapsed().as_secs_f64();
    if joined.state_digest()? != digest {
        bail!("the peer that joined from a snapshot has another state");
    }
    let speedup = bootstrap_s_before / bootstrap_s_after.max(1e-9);

    // What a user gets: daemons on the data directories, a fresh node joining through the
    // API over iroh loopback from an unpruned member and from the pruned one.
    let held = snapshot.held.len();
    for store in stores {
        store.close()?;
    }
    for store in [reopened, joined] {
        store.close()?;
    }
    drop((nodes, joiner, late));
    out.progress("  joining through the daemons' API (from history, then from a snapshot)…");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let key = format!("key{:06}", (writes.max(1) - 1) % keys.max(1));
    let store = id.to_string();
    let from_history = runtime.block_on(join_through_api(
        dirs[1].root(),
        dirs[5].root(),
        &store,
        &key,
    ))?;
    let from_snapshot = runtime.block_on(join_through_api(
        dirs[0].root(),
        dirs[6].root(),
        &store,
        &key,
    ))?;
    if from_history.snapshot_bytes != 0 || from_snapshot.snapshot_bytes == 0 {
        bail!(
            "the joins did not take the expected paths (snapshot bytes {} from history, {} from the pruned node)",
            from_history.snapshot_bytes,
            from_snapshot.snapshot_bytes
        );
    }
    let api_speedup = from_history.seconds / from_snapshot.seconds.max(1e-9);

    let figures = json!({
        "writes": writes,
        "keys": keys,
        "nodes": 3,
        "write_s": write_s,
        "epoch": epoch.number,
        "intentions_before": intentions_before,
        "intentions_after": intentions_after,
        "deleted": report.deleted,
        "log_bytes_before": log_bytes_before,
        "log_bytes_after": log_bytes_after,
        "state_bytes": state_bytes,
        "log_after_per_state": log_bytes_after as f64 / state_bytes.max(1) as f64,
        "prune_s": prune_s,
        "prune_steps": steps,
        "max_step_ms": max_step.as_secs_f64() * 1e3,
        "reopen_compact_s": reopen_s,
        "bootstrap_s_before": bootstrap_s_before,
        "bootstrap_s_after": bootstrap_s_after,
        "bootstrap_speedup": speedup,
        "snapshot_bytes": snapshot_bytes,
        "snapshot_intentions": held,
        "join_s_history_api": from_history.seconds,
        "join_fetched_history_api": from_history.fetched,
        "join_s_snapshot_api": from_snapshot.seconds,
        "join_snapshot_bytes_api": from_snapshot.snapshot_bytes,
        "join_speedup_api": api_speedup,
    });
    out.record(
        &format!(
            "prune: {writes} puts over {keys} keys on 3 nodes ({write_s:.1} s)\n\
             \x20 log.db {log_bytes_before} B → {log_bytes_after} B after pruning and compaction \
             ({intentions_before} → {intentions_after} intentions; state {state_bytes} B, log/state {:.2})\n\
             \x20 prune {prune_s:.2} s in {steps} steps, longest step {:.1} ms (a write waits at most that); reopen with compaction {reopen_s:.2} s\n\
             \x20 bootstrap of a new peer: from the full history {bootstrap_s_before:.2} s; from a snapshot {bootstrap_s_after:.2} s \
             ({snapshot_bytes} B, {held} intentions held), {speedup:.1}× faster\n\
             \x20 a new node joining through the daemons' API over iroh loopback: from an unpruned member \
             {:.2} s ({} intentions), from the pruned one {:.2} s (snapshot of {} B), {api_speedup:.1}× faster",
            log_bytes_after as f64 / state_bytes.max(1) as f64,
            max_step.as_secs_f64() * 1e3,
            from_history.seconds,
            from_history.fetched,
            from_snapshot.seconds,
            from_snapshot.snapshot_bytes,
        ),
        figures,
    );
    Ok(())
}
