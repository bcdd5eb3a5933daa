//! `lattice bench cas`: blobs between two nodes over iroh on loopback. One big blob fetched
//! whole (verified as it arrives), the same size again interrupted at half and resumed, many
//! small blobs fetched with several in flight, and the ceiling: the same bytes as a plain
//! stream copy between two iroh endpoints on loopback in the same run.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lattice_log::SyntheticDag;
use lattice_model::{Hash, NodeKey};
use lattice_net::{IrohNet, Mesh, MeshTransport, ReplicatorConfig, Transport};
use lattice_sync::Frames as _;
use serde_json::json;

use crate::cli::BenchCasArgs;
use crate::output::Output;

const MIB: u64 = 1024 * 1024;
/// Streams fetching small blobs at once.
const SMALL_INFLIGHT: usize = 32;

/// `size` bytes of a cheap pseudo-random pattern (xorshift), produced as they are read.
pub(crate) struct Pattern {
    left: u64,
    state: u64,
}

impl Pattern {
    pub(crate) fn new(size: u64, seed: u64) -> Pattern {
        Pattern {
            left: size,
            state: seed | 1,
        }
    }
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

pub(crate) fn run(args: BenchCasArgs, out: &Output) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(args, out))
}

fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds.max(1e-9)
}

/// Seconds to copy `size` bytes of the pattern over one plain stream between two fresh iroh
/// endpoints on loopback (1 MiB frames, as the blob transfer sends).
async fn raw_copy(size: u64) -> anyhow::Result<f64> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let a = IrohNet::bind(&NodeKey::from_seed([11; 32]), loopback).await?;
    let b = IrohNet::bind(&NodeKey::from_seed([12; 32]), loopback).await?;
    b.add_peer(&a.local());
    let receiver = a.clone();
    let receiving = tokio::spawn(async move {
        let conn = receiver.accept().await.context("no connection came")?;
        let mut stream = conn.accept().await?;
        let mut got = 0u64;
        while let Some(frame) = stream.recv().await? {
            got += frame.len() as u64;
        }
        anyhow::Ok(got)
    });
    let start = Instant::now();
    let conn = b.connect(a.local().id).await?;
    let mut stream = conn.open().await?;
    let mut pattern = Pattern::new(size, 3);
    let mut frame = vec![0u8; MIB as usize];
    loop {
        let n = pattern.read(&mut frame)?;
        if n == 0 {
            break;
        }
        stream.send(frame[..n].to_vec()).await?;
    }
    stream.finish().await;
    let got = receiving.await??;
    let seconds = start.elapsed().as_secs_f64();
    if got != size {
        bail!("the plain copy moved {got} bytes, not {size}");
    }
    a.shutdown().await;
    b.shutdown().await;
    Ok(seconds)
}

/// A loopback-only iroh endpoint for the iroh-blobs comparison: relays, address lookup and
/// port mapping off, as our own endpoints.
async fn loopback_endpoint(seed: u8) -> anyhow::Result<iroh::Endpoint> {
    use iroh::endpoint::{PortmapperConfig, presets};
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    Ok(iroh::Endpoint::builder(presets::Minimal)
        .secret_key(iroh::SecretKey::from_bytes(&[seed; 32]))
        .relay_mode(iroh::RelayMode::Disabled)
        .clear_address_lookup()
        .portmapper_config(PortmapperConfig::Disabled)
        .clear_ip_transports()
        .bind_addr(loopback)?
        .alpns(vec![iroh_blobs::ALPN.to_vec()])
        .bind()
        .await?)
}

/// Seconds iroh-blobs (its file store on both sides, its own protocol) takes to fetch `size`
/// bytes of the pattern between two fresh endpoints on loopback: the same work as our big
/// blob fetch, done by the library our verified streaming comes from.
async fn iroh_blobs_copy(dir: &std::path::Path, size: u64) -> anyhow::Result<f64> {
    use iroh_blobs::store::fs::FsStore;
    let source = dir.join("iroh-blobs-source");
    {
        let mut file = std::fs::File::create(&source)?;
        std::io::copy(&mut Pattern::new(size, 1), &mut file)?;
    }
    let provider_store = FsStore::load(dir.join("iroh-blobs-a"))
        .await
        .context("opening an iroh-blobs store")?;
    let tag = provider_store
        .blobs()
        .add_path(&source)
        .with_tag()
        .await
        .context("adding the blob to iroh-blobs")?;
    std::fs::remove_file(&source)?;
    let provider = loopback_endpoint(21).await?;
    let router = iroh::protocol::Router::builder(provider.clone())
        .accept(
            iroh_blobs::ALPN,
            iroh_blobs::BlobsProtocol::new(&provider_store, None),
        )
        .spawn();
    let mut addr = iroh::EndpointAddr::new(provider.id());
    for socket in provider.bound_sockets() {
        addr = addr.with_ip_addr(socket);
    }
    let receiver_store = FsStore::load(dir.join("iroh-blobs-b"))
        .await
        .context("opening an iroh-blobs store")?;
    let receiver = loopback_endpoint(22).await?;
    let start = Instant::now();
    let conn = receiver.connect(addr, iroh_blobs::ALPN).await?;
    let stats = receiver_store
        .remote()
        .fetch(conn, tag.hash)
        .complete()
        .await
        .context("fetching with iroh-blobs")?;
    let seconds = start.elapsed().as_secs_f64();
    if stats.payload_bytes_read != size {
        bail!(
            "iroh-blobs moved {} bytes, not {size}",
            stats.payload_bytes_read
        );
    }
    receiver.close().await;
    router.shutdown().await?;
    // The stores' shutdown answers only after their actors stopped (a closed reply channel):
    // scratch stores, nothing to keep.
    let _ = receiver_store.shutdown().await;
    let _ = provider_store.shutdown().await;
    Ok(seconds)
}

async fn bench(args: BenchCasArgs, out: &Output) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let big = args.big_mib * MIB;
    out.progress(&format!(
        "lattice bench cas: a {} MiB blob and {} × {} KiB blobs between two nodes over iroh on loopback",
        args.big_mib, args.small, args.small_kib
    ));
    let dag = SyntheticDag::new(5, 2, 1, 10);
    let config = ReplicatorConfig {
        auto_sync: false,
        anti_entropy: Duration::from_secs(3600),
        ..ReplicatorConfig::default()
    };
    let mesh = Mesh::start(
        tmp.path(),
        2,
        MeshTransport::Iroh,
        config,
        dag.genesis().clone(),
    )
    .await?;
    let store = mesh.store_id();
    let cas = mesh.give_blob_stores()?;
    let from = [mesh.nodes[0].id()];
    let fetcher = &mesh.nodes[1].replicator;
    let put = |seed: u64, size: u64| {
        let cas = cas[0].clone();
        tokio::task::spawn_blocking(move || cas.put(&store, Pattern::new(size, seed)))
    };

    // The big blob: put on the first node, fetched whole by the second.
    let start = Instant::now();
    let blob = put(1, big).await??;
    let put_s = start.elapsed().as_secs_f64();
    out.progress("  fetching the big blob…");
    let start = Instant::now();
    let fetched = fetcher.fetch_blob(&store, &blob.hash, &from, None).await?;
    let big_s = start.elapsed().as_secs_f64();
    if fetched.received != big {
        bail!(
            "the big blob came with {} bytes, not {big}",
            fetched.received
        );
    }
    let checker = cas[1].clone();
    let hash = blob.hash;
    tokio::task::spawn_blocking(move || checker.verify(&store, &hash)).await??;

    // The same size again, interrupted at half and resumed.
    out.progress("  interrupting a transfer at half, then resuming it…");
    let second = put(2, big).await??;
    let counter = Arc::new(AtomicU64::new(0));
    let interrupted = {
        let (replicator, counter) = (fetcher.clone(), counter.clone());
        let hash = second.hash;
        tokio::spawn(async move {
            replicator
                .fetch_blob(&store, &hash, &from, Some(counter))
                .await
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while counter.load(Ordering::Relaxed) < big / 2 && !interrupted.is_finished() {
        tick.tick().await;
    }
    interrupted.abort();
    let _ = interrupted.await;
    let verified_before = {
        let cas = cas[1].clone();
        let hash = second.hash;
        // Waits for the interrupted receiver to let go of the blob.
        tokio::task::spawn_blocking(move || {
            cas.partial(&hash)
                .map(|p| p.map_or(0, |p| p.received_bytes()))
        })
        .await??
    };
    let resumed = fetcher
        .fetch_blob(&store, &second.hash, &from, None)
        .await?;
    let refetched = resumed
        .received
        .saturating_sub(second.size - verified_before.min(second.size));

    // Small blobs, several in flight.
    out.progress(&format!("  {} small blobs…", args.small));
    let small_size = args.small_kib * 1024;
    let start = Instant::now();
    let small: Vec<Hash> = {
        let cas = cas[0].clone();
        let count = args.small;
        tokio::task::spawn_blocking(move || {
            (0..count)
                .map(|i| {
                    cas.put(&store, Pattern::new(small_size, 100 + i))
                        .map(|b| b.hash)
                })
                .collect::<Result<Vec<Hash>, _>>()
        })
        .await??
    };
    let small_put_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    // Each of several streams fetches its share, one blob after another.
    let share = small.len().div_ceil(SMALL_INFLIGHT).max(1);
    let mut workers = Vec::new();
    for part in small.chunks(share) {
        let (replicator, part, peer) = (fetcher.clone(), part.to_vec(), from[0]);
        workers.push(tokio::spawn(async move {
            replicator.fetch_blobs(&store, &part, &peer).await
        }));
    }
    let mut small_received = 0;
    for w in workers {
        small_received += w.await??;
    }
    if small_received != args.small * small_size {
        bail!(
            "the small blobs came with {small_received} bytes, not {}",
            args.small * small_size
        );
    }
    let small_s = start.elapsed().as_secs_f64();
    for hash in small.iter().take(10) {
        if cas[1].stat(&store, hash)?.is_none() {
            bail!("a small blob did not arrive");
        }
    }
    mesh.stop().await;

    out.progress("  the same bytes as a plain stream copy…");
    let raw_s = raw_copy(big).await?;
    out.progress("  the same bytes with iroh-blobs…");
    let iroh_blobs_s = iroh_blobs_copy(tmp.path(), big).await?;

    let api_bytes = args.api_mib * MIB;
    out.progress(&format!(
        "  through two daemons' API: a {} MiB blob put, fetched by the other, read again…",
        args.api_mib
    ));
    let api = through_daemons(tmp.path(), api_bytes).await?;

    let big_mbps = mb_per_s(big, big_s);
    let raw_mbps = mb_per_s(big, raw_s);
    let iroh_blobs_mbps = mb_per_s(big, iroh_blobs_s);
    let small_per_s = args.small as f64 / small_s.max(1e-9);
    let figures = json!({
        "big_bytes": big,
        "big_s": big_s,
        "big_mb_per_s": big_mbps,
        "put_mb_per_s": mb_per_s(big, put_s),
        "raw_mb_per_s": raw_mbps,
        "big_vs_raw": big_mbps / raw_mbps.max(1e-9),
        "iroh_blobs_mb_per_s": iroh_blobs_mbps,
        "resume_verified_bytes": verified_before,
        "resume_received_bytes": resumed.received,
        "resume_refetched_bytes": refetched,
        "small_count": args.small,
        "small_bytes": small_size,
        "small_per_s": small_per_s,
        "small_put_per_s": args.small as f64 / small_put_s.max(1e-9),
        "api_bytes": api_bytes,
        "api_put_mb_per_s": mb_per_s(api_bytes, api.put_s),
        "api_fetch_mb_per_s": mb_per_s(api_bytes, api.fetch_s),
        "api_read_mb_per_s": mb_per_s(api_bytes, api.read_s),
    });
    out.record(
        &format!(
            "cas: a {} MiB blob fetched at {big_mbps:.0} MB/s (a plain stream copy: {raw_mbps:.0} MB/s, {:.0}%; iroh-blobs: {iroh_blobs_mbps:.0} MB/s); put at {:.0} MB/s\n\
             \x20 resumed after an interruption at half: {verified_before} bytes kept, {} fetched again of them\n\
             \x20 {} × {} KiB blobs: {small_per_s:.0} fetched/s ({SMALL_INFLIGHT} in flight), {:.0} put/s\n\
             \x20 through the daemons' API ({} MiB): put {:.0} MB/s, fetched from the other node {:.0} MB/s, read back {:.0} MB/s",
            args.big_mib,
            100.0 * big_mbps / raw_mbps.max(1e-9),
            mb_per_s(big, put_s),
            refetched,
            args.small,
            args.small_kib,
            args.small as f64 / small_put_s.max(1e-9),
            args.api_mib,
            mb_per_s(api_bytes, api.put_s),
            mb_per_s(api_bytes, api.fetch_s),
            mb_per_s(api_bytes, api.read_s),
        ),
        figures,
    );
    Ok(())
}

/// Seconds a blob took through two daemons' API.
struct ApiFigures {
    /// Put from a client stream into the first daemon.
    put_s: f64,
    /// Got from the second daemon, which fetched it from the first over iroh.
    fetch_s: f64,
    /// Got from the second daemon again (held there now).
    read_s: f64,
}

/// Streams `size` pattern bytes into a daemon's `BlobService.Put` (as `lattice cas put`
/// does); returns the blob's hash.
async fn api_put(
    client: &mut crate::api::Client,
    store: &str,
    size: u64,
) -> anyhow::Result<String> {
    let quiet = Output::new(true);
    let source = Box::new(Pattern::new(size, 21));
    let info = crate::cas_cmd::put_from(
        client,
        store,
        source,
        Some(size),
        "the pattern",
        false,
        &quiet,
    )
    .await?;
    if info.size != size {
        bail!("the daemon stored {} bytes of the {size} put", info.size);
    }
    Ok(info.hash)
}

/// Reads blob `hash` whole through a daemon's `BlobService.Get` (as `lattice cas get`
/// does), hashing what arrives; fails unless it hashes to `hash`. Returns the bytes the
/// daemon fetched from peers.
async fn api_get(client: &mut crate::api::Client, store: &str, hash: &str) -> anyhow::Result<u64> {
    let request = lattice_proto::v1::BlobGetRequest {
        store: store.to_string(),
        hash: hash.to_string(),
        ..lattice_proto::v1::BlobGetRequest::default()
    };
    let mut hasher = blake3::Hasher::new();
    let (info, _) =
        crate::cas_cmd::get_into(client, request, &mut hasher, &Output::new(true)).await?;
    let got = hasher.finalize().to_hex();
    if got.as_str() != hash {
        bail!("the blob read through the API hashes to {got}, not {hash}");
    }
    Ok(info.fetched_bytes)
}

/// Two daemons on `dir`: the first makes a store and invites the second; a blob of `size`
/// bytes is put into the first, got from the second (fetched over iroh) and got again.
async fn through_daemons(dir: &std::path::Path, size: u64) -> anyhow::Result<ApiFigures> {
    use crate::bench_daemon::{Daemon, create, invite_and_join};
    let mut a = Daemon::start(&dir.join("api-a")).await?;
    let mut b = Daemon::start(&dir.join("api-b")).await?;
    let store = create(&mut a.client, "blobs").await?;
    invite_and_join(&mut a, &mut b, &store).await?;
    let start = Instant::now();
    let hash = api_put(&mut a.client, &store, size).await?;
    let put_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let fetched = api_get(&mut b.client, &store, &hash).await?;
    let fetch_s = start.elapsed().as_secs_f64();
    if fetched != size {
        bail!("the second daemon fetched {fetched} bytes of a {size}-byte blob");
    }
    let start = Instant::now();
    let again = api_get(&mut b.client, &store, &hash).await?;
    let read_s = start.elapsed().as_secs_f64();
    if again != 0 {
        bail!("the second daemon fetched the blob again ({again} bytes)");
    }
    a.stop().await?;
    b.stop().await?;
    Ok(ApiFigures {
        put_s,
        fetch_s,
        read_s,
    })
}
