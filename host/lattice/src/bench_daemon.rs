//! `lattice bench daemon`: what a user of the daemon's API gets. Starts real `lattice daemon`
//! processes on temporary data directories and drives them through the gRPC API over their
//! Unix sockets: durable kv puts one at a time and with many in flight, disk bytes per put,
//! and the time from process start to the first answered read of a store of a given size.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lattice_proto::v1;
use serde_json::{Value, json};
use tokio_stream::StreamExt as _;

use crate::api::{Client, SOCKET};
use crate::cli::BenchDaemonArgs;
use crate::output::Output;

/// Value bytes per put.
const VALUE_BYTES: usize = 100;
/// How long a daemon may take to start or stop.
const PROCESS_DEADLINE: Duration = Duration::from_secs(60);

pub(crate) fn run(args: BenchDaemonArgs, out: &Output) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(args, out))
}

/// A `lattice daemon` child process.
pub(crate) struct Daemon {
    /// Taken by [`Daemon::stop`].
    child: Option<Child>,
    /// A client of its API.
    pub(crate) client: Client,
    started: Instant,
    /// Where its standard error goes (`DIR/daemon.log`), shown when a step fails.
    log: PathBuf,
}

impl Daemon {
    /// Starts a daemon on `dir` and connects once it says it is running.
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<Daemon> {
        let exe = std::env::current_exe().context("finding the lattice binary")?;
        let started = Instant::now();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join("daemon.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut child = Command::new(exe)
            .args(["--json", "--data-dir"])
            .arg(dir)
            .args(["daemon", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("starting `lattice daemon`")?;
        let stdout = child.stdout.take().context("the daemon's stdout")?;
        // The daemon prints one JSON line once its socket is bound.
        let running = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(line) = lines.next().transpose()? {
                if serde_json::from_str::<Value>(&line).is_ok_and(|v| v["event"] == "running") {
                    // Keep draining so the daemon never blocks on a full pipe.
                    std::thread::spawn(move || for _ in lines {});
                    return Ok(true);
                }
            }
            Ok::<_, std::io::Error>(false)
        });
        let running = tokio::time::timeout(PROCESS_DEADLINE, running)
            .await
            .context("the daemon did not start in time")???;
        if !running {
            let status = child.wait()?;
            bail!("the daemon exited before it was running ({status})");
        }
        let client = Client::connect(&dir.join(SOCKET))
            .await
            .context("the daemon's socket does not answer")?;
        Ok(Daemon {
            child: Some(child),
            client,
            started,
            log,
        })
    }

    /// The last `lines` lines of the daemon's standard error, for an error message.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!(
            "{} (last {} lines):\n{tail}",
            self.log.display(),
            lines.min(all.len())
        )
    }

    /// Asks the daemon to stop and waits for the process to exit.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.client
            .node
            .shutdown(v1::Empty {})
            .await
            .context("asking the daemon to stop")?;
        let mut child = self
            .child
            .take()
            .context("the daemon was stopped already")?;
        let status = tokio::time::timeout(
            PROCESS_DEADLINE,
            tokio::task::spawn_blocking(move || child.wait()),
        )
        .await
        .context("the daemon did not stop in time")???;
        if !status.success() {
            bail!("the daemon exited with {status}");
        }
        Ok(())
    }

    /// Peak resident memory of the daemon process, from /proc (Linux only).
    fn peak_rss_mib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: u64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kib / 1024)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A daemon left behind by an error must not outlive the benchmark.
        if let Some(child) = self.child.as_mut()
            && let Ok(None) = child.try_wait()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn key(i: u64) -> String {
    format!("k{i:015}")
}

async fn put(client: &mut Client, store: &str, i: u64, value: &str) -> anyhow::Result<()> {
    client
        .store
        .call(v1::CallRequest {
            store: store.to_string(),
            method: "put".into(),
            args_json: json!({"key": key(i), "value": value}).to_string(),
            words: Vec::new(),
        })
        .await
        .with_context(|| format!("put {}", key(i)))?;
    Ok(())
}

async fn get(client: &mut Client, store: &str, i: u64) -> anyhow::Result<Value> {
    let reply = client
        .store
        .call(v1::CallRequest {
            store: store.to_string(),
            method: "get".into(),
            args_json: json!({"key": key(i)}).to_string(),
            words: Vec::new(),
        })
        .await
        .with_context(|| format!("get {}", key(i)))?
        .into_inner();
    Ok(serde_json::from_str(&reply.json)?)
}

/// Has daemon `a` (a member of `store`) invite `b` and `b` join through its API; returns the
/// seconds the join took and its last answer.
pub(crate) async fn invite_and_join(
    a: &mut Daemon,
    b: &mut Daemon,
    store: &str,
) -> anyhow::Result<(f64, v1::JoinProgress)> {
    try_invite_and_join(a, b, store).await.with_context(|| {
        format!(
            "the join failed; inviter's log {}\njoiner's log {}",
            a.log_tail(20),
            b.log_tail(20)
        )
    })
}

async fn try_invite_and_join(
    a: &mut Daemon,
    b: &mut Daemon,
    store: &str,
) -> anyhow::Result<(f64, v1::JoinProgress)> {
    let token = a
        .client
        .store
        .invite(v1::InviteRequest {
            store: store.to_string(),
            ttl_seconds: 600,
        })
        .await
        .context("inviting through the API")?
        .into_inner()
        .token;
    let start = Instant::now();
    let mut stream = b
        .client
        .store
        .join(v1::JoinRequest { token })
        .await
        .context("joining through the API")?
        .into_inner();
    while let Some(p) = stream.next().await {
        let p = p.context("joining through the API")?;
        if p.done {
            return Ok((start.elapsed().as_secs_f64(), p));
        }
    }
    bail!("the join ended without its last answer")
}

/// Creates a kv store named `name` through the API; returns its id.
pub(crate) async fn create(client: &mut Client, name: &str) -> anyhow::Result<String> {
    create_typed(client, "kv", name).await
}

/// Creates a store of type `store_type` named `name` through the API; returns its id.
pub(crate) async fn create_typed(
    client: &mut Client,
    store_type: &str,
    name: &str,
) -> anyhow::Result<String> {
    Ok(client
        .store
        .create(v1::CreateRequest {
            store_type: store_type.into(),
            name: name.into(),
            parent: String::new(),
        })
        .await
        .with_context(|| format!("creating a {store_type} store"))?
        .into_inner()
        .id)
}

/// Puts keys `from..to` (or, with no `value`, reads them) with `inflight` callers, each one
/// call at a time. Returns calls per second.
async fn drive(
    client: &Client,
    store: &str,
    (from, to): (u64, u64),
    inflight: u64,
    value: Option<&str>,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(from));
    let start = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..inflight {
        let (mut client, next, store, value) = (
            client.clone(),
            next.clone(),
            store.to_string(),
            value.map(str::to_string),
        );
        callers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return Ok::<_, anyhow::Error>(());
                }
                match &value {
                    Some(value) => put(&mut client, &store, i, value).await?,
                    None => {
                        get(&mut client, &store, i).await?;
                    }
                }
            }
        }));
    }
    for caller in callers {
        caller.await??;
    }
    Ok((to - from) as f64 / start.elapsed().as_secs_f64())
}

/// Bytes under `dir` by file name (files of the same name summed).
fn file_bytes(dir: &Path) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                todo.push(entry.path());
            } else {
                *out.entry(entry.file_name().to_string_lossy().into_owned())
                    .or_insert(0) += meta.len();
            }
        }
    }
    Ok(out)
}

/// Median time of a one-shot `lattice get` on `dir` with no daemon running (the command
/// opens the node in its own process).
fn oneshot_get_ms(dir: &Path, store: &str, key_index: u64) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("finding the lattice binary")?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let output = Command::new(&exe)
            .args(["--json", "--data-dir"])
            .arg(dir)
            .args(["get", store, &key(key_index.saturating_sub(1))])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .context("running `lattice get`")?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        if !output.status.success() {
            bail!("one-shot `lattice get` failed ({})", output.status);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Restarts timed per store size by [`open_first_read`]; the median is reported.
const OPEN_SAMPLES: usize = 5;

/// Fills a fresh data directory with one kv store of `size` intentions (genesis and system
/// writes included), stops the daemon, then times restarts up to the first answered read
/// (the median of [`OPEN_SAMPLES`]).
async fn open_first_read(
    root: &Path,
    size: u64,
    inflight: u64,
    value: &str,
    out: &Output,
) -> anyhow::Result<f64> {
    let dir = root.join(format!("open-{size}"));
    let daemon = Daemon::start(&dir).await?;
    let mut client = daemon.client.clone();
    let store = create(&mut client, "open").await?;
    out.progress(&format!("  filling a store with {size} puts…"));
    drive(&client, &store, (0, size), inflight, Some(value)).await?;
    daemon.stop().await?;
    let mut times = Vec::with_capacity(OPEN_SAMPLES);
    for _ in 0..OPEN_SAMPLES {
        let daemon = Daemon::start(&dir).await?;
        let mut client = daemon.client.clone();
        let read = get(&mut client, &store, size / 2).await?;
        times.push(daemon.started.elapsed().as_secs_f64() * 1000.0);
        if read["value"] != value {
            bail!("the reopened store did not return what was written: {read}");
        }
        daemon.stop().await?;
    }
    std::fs::remove_dir_all(&dir).ok();
    times.sort_by(f64::total_cmp);
    Ok(times.get(OPEN_SAMPLES / 2).copied().unwrap_or_default())
}

async fn bench(args: BenchDaemonArgs, out: &Output) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let root = tmp.path().to_path_buf();
    let value = "v".repeat(VALUE_BYTES);
    let seq_count = args.count.min(args.seq_count);
    out.progress(&format!(
        "lattice bench daemon: {seq_count} puts one at a time, {} with {} in flight, 16-byte keys, {VALUE_BYTES}-byte values, data in {}",
        args.count,
        args.inflight,
        root.display()
    ));
    let dir: PathBuf = root.join("main");
    let daemon = Daemon::start(&dir).await?;
    let mut client = daemon.client.clone();
    let store = create(&mut client, "bench").await?;
    let files_before = file_bytes(&dir)?;

    // One caller, one durable put at a time.
    let mut latencies = Vec::with_capacity(seq_count as usize);
    let start = Instant::now();
    for i in 0..seq_count {
        let t = Instant::now();
        put(&mut client, &store, i, &value).await?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let seq_rate = seq_count as f64 / start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    out.progress(&format!(
        "  one caller: {seq_rate:.0} puts/s, p50 {:.2} ms, p99 {:.2} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    ));

    // Many callers at once.
    let conc_rate = drive(
        &client,
        &store,
        (seq_count, seq_count + args.count),
        args.inflight,
        Some(&value),
    )
    .await?;
    out.progress(&format!(
        "  {} in flight: {conc_rate:.0} puts/s",
        args.inflight
    ));
    // The API and actor round trip alone: reads with as many in flight.
    let reads = args.count.min(20_000);
    let get_rate = drive(&client, &store, (0, reads), args.inflight, None).await?;
    out.progress(&format!(
        "  {} in flight: {get_rate:.0} gets/s (the API's own cost)",
        args.inflight
    ));
    let check = get(&mut client, &store, seq_count + args.count - 1).await?;
    if check["value"] != value {
        bail!("the last put does not read back: {check}");
    }
    let peak_rss = daemon.peak_rss_mib();
    daemon.stop().await?;
    let puts = seq_count + args.count;
    let files_after = file_bytes(&dir)?;
    let total = |files: &std::collections::BTreeMap<String, u64>| files.values().sum::<u64>();
    let bytes_per_put =
        total(&files_after).saturating_sub(total(&files_before)) as f64 / puts as f64;
    // Where the bytes go, by file name (log.db, state.db, system.db, …).
    let mut by_file = serde_json::Map::new();
    for (name, bytes) in files_after {
        let grew = bytes.saturating_sub(files_before.get(&name).copied().unwrap_or(0));
        let per_put = (grew as f64 / puts as f64).round();
        if per_put > 0.0 {
            by_file.insert(name, json!(per_put));
        }
    }
    out.progress(&format!(
        "  {bytes_per_put:.0} bytes on disk per put ({})",
        Value::Object(by_file.clone())
    ));
    let oneshot = oneshot_get_ms(&dir, &store, seq_count)?;
    out.progress(&format!(
        "  one-shot `lattice get` with no daemon: {oneshot:.1} ms"
    ));
    std::fs::remove_dir_all(&dir).ok();

    let mut report = json!({
        "seq_put_per_s": seq_rate.round(),
        "seq_p50_ms": round2(percentile(&latencies, 0.5)),
        "seq_p99_ms": round2(percentile(&latencies, 0.99)),
        "conc_put_per_s": conc_rate.round(),
        "conc_get_per_s": get_rate.round(),
        "inflight": args.inflight,
        "count": args.count,
        "seq_count": seq_count,
        "bytes_per_put": bytes_per_put.round(),
        "bytes_per_put_by_file": by_file,
        "daemon_peak_rss_mib": peak_rss,
        "oneshot_get_ms": round2(oneshot),
    });
    for size in &args.open_sizes {
        out.progress(&format!("  open to first read at {size} intentions…"));
        let ms = open_first_read(&root, *size, args.inflight, &value, out).await?;
        out.progress(&format!("  open to first read at {size}: {ms:.1} ms"));
        let name = match *size {
            s if s % 1000 == 0 => format!("open_first_read_ms_{}k", s / 1000),
            s => format!("open_first_read_ms_{s}"),
        };
        report[name] = json!(round2(ms));
    }
    out.record(&serde_json::to_string_pretty(&report)?, report);
    Ok(())
}
