//! `lattice bench fs`: file sync through FUSE mounts on two real daemons on loopback. A big
//! file written then read sequentially through node A's mount, many small files created
//! there, the same on the local disk in the same run, and the time until the last small file
//! is readable through node B's mount.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lattice_proto::v1;
use serde_json::json;

use crate::bench_cas::Pattern;
use crate::bench_daemon::{Daemon, create_typed, invite_and_join};
use crate::cli::BenchFsArgs;
use crate::output::Output;

const MIB: u64 = 1024 * 1024;

pub(crate) fn run(args: BenchFsArgs, out: &Output) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(args, out))
}

fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds.max(1e-9)
}

/// Drops the page cache when allowed (root), so reads come from the disk, not memory, on
/// both sides. Returns whether it could.
fn drop_caches() -> bool {
    nix_sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn nix_sync() {
    let _ = std::process::Command::new("sync").status();
}

/// Seconds to write `size` bytes of the pattern to `path` in 1 MiB writes, durable on close
/// (`sync` for the local disk: a mount's close is durable in the store).
fn write_big(path: &Path, size: u64, local: bool) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut pattern = Pattern::new(size, 7);
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = pattern.read(&mut buf)?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])?;
    }
    if local {
        file.sync_all()?;
    }
    drop(file);
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds to read `path` whole in 1 MiB reads; fails unless `size` bytes came.
fn read_big(path: &Path, size: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    if total != size {
        bail!("read {total} bytes of {}, not {size}", path.display());
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds to create files `f0`..`f{count-1}` of `size` bytes in `dir` by `writers` threads
/// side by side (each thread closes a file before its next; durable on close: `fsync` for
/// the local disk).
fn write_small(
    dir: &Path,
    count: u64,
    size: u64,
    local: bool,
    writers: u64,
) -> anyhow::Result<(f64, u64)> {
    std::fs::create_dir_all(dir)?;
    let data = vec![b'x'; size as usize];
    // The file closed last (the clock and the index), for the time it takes to show elsewhere.
    let last = std::sync::Mutex::new((Instant::now(), 0u64));
    let start = Instant::now();
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let (data, last) = (&data, &last);
                scope.spawn(move || -> anyhow::Result<()> {
                    for i in (w..count).step_by(writers as usize) {
                        let path = dir.join(format!("f{i}"));
                        let mut file = std::fs::File::create(&path)
                            .with_context(|| format!("creating {}", path.display()))?;
                        file.write_all(data)?;
                        if local {
                            file.sync_all()?;
                        }
                        drop(file);
                        let now = Instant::now();
                        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                        if now > last.0 {
                            *last = (now, i);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        threads
            .into_iter()
            .try_for_each(|t| t.join().map_err(|_| anyhow::anyhow!("a writer panicked"))?)
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let (_, last) = last.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok((seconds, last))
}

/// Waits until file `f{last}` of `dir` reads as `size` bytes and the folder lists all
/// `count` files: the time a user waits to see them all.
fn wait_visible(dir: &Path, count: u64, size: u64, last: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let wait = |what: &str, done: &dyn Fn() -> bool| -> anyhow::Result<()> {
        // Polled every 5 ms: the other node's mount has no event to wait on.
        while !done() {
            if Instant::now() > deadline {
                bail!("{what} did not show on the other node within 120 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    };
    let last_file = dir.join(format!("f{last}"));
    wait("the last file closed", &|| {
        std::fs::read(&last_file).is_ok_and(|d| d.len() as u64 == size)
    })?;
    wait("every small file", &|| {
        std::fs::read_dir(dir).is_ok_and(|listing| listing.count() as u64 == count)
    })
}

/// Checks that every file `f0`..`f{count-1}` of `dir` shows `size` bytes.
fn check_sizes(dir: &Path, count: u64, size: u64) -> anyhow::Result<()> {
    for i in 0..count {
        let len = std::fs::metadata(dir.join(format!("f{i}")))?.len();
        if len != size {
            bail!("f{i} shows {len} bytes on the other node, not {size}");
        }
    }
    Ok(())
}

/// Mounts `store` of `daemon` on `dir` (made when missing).
pub(crate) async fn mount(daemon: &mut Daemon, store: &str, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    daemon
        .client
        .fs
        .mount(v1::MountRequest {
            store: store.to_string(),
            dir: dir.display().to_string(),
        })
        .await
        .with_context(|| {
            format!(
                "mounting on {} (needs /dev/fuse and fusermount3)",
                dir.display()
            )
        })?;
    Ok(())
}

async fn bench(args: BenchFsArgs, out: &Output) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let big = args.big_mib * MIB;
    let small_size = args.small_kib * 1024;
    out.progress(&format!(
        "lattice bench fs: a {} MiB file and {} × {} KiB files through a FUSE mount of two daemons, and on the local disk",
        args.big_mib, args.small, args.small_kib
    ));
    let mut a = Daemon::start(&tmp.path().join("a")).await?;
    let mut b = Daemon::start(&tmp.path().join("b")).await?;
    let store = create_typed(&mut a.client, "fs", "bench").await?;
    invite_and_join(&mut a, &mut b, &store).await?;
    let (a_mnt, b_mnt) = (tmp.path().join("a-mnt"), tmp.path().join("b-mnt"));
    mount(&mut a, &store, &a_mnt).await?;
    mount(&mut b, &store, &b_mnt).await?;
    let local = tmp.path().join("local");
    std::fs::create_dir_all(&local)?;

    let figures = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
        let cold = drop_caches();
        let local_write = write_big(&local.join("big"), big, true)?;
        drop_caches();
        let local_read = read_big(&local.join("big"), big)?;
        let write = write_big(&a_mnt.join("big"), big, false)?;
        drop_caches();
        let read = read_big(&a_mnt.join("big"), big)?;
        let writers = args.writers;
        let (local_small, _) =
            write_small(&local.join("small"), args.small, small_size, true, writers)?;
        let (small, last) =
            write_small(&a_mnt.join("small"), args.small, small_size, false, writers)?;
        let closed = Instant::now();
        wait_visible(&b_mnt.join("small"), args.small, small_size, last)?;
        let visible = closed.elapsed().as_secs_f64();
        check_sizes(&b_mnt.join("small"), args.small, small_size)?;
        let one_count = args.small.min(2_000);
        let (one, _) = write_small(&a_mnt.join("one"), one_count, small_size, false, 1)?;
        Ok(json!({
            "big_bytes": big,
            "write_mb_per_s": mb_per_s(big, write),
            "read_mb_per_s": mb_per_s(big, read),
            "local_write_mb_per_s": mb_per_s(big, local_write),
            "local_read_mb_per_s": mb_per_s(big, local_read),
            "small_count": args.small,
            "small_bytes": small_size,
            "small_files_per_s": args.small as f64 / small.max(1e-9),
            "small_writers": writers,
            "small_files_per_s_one_writer": one_count as f64 / one.max(1e-9),
            "local_small_files_per_s": args.small as f64 / local_small.max(1e-9),
            "visible_on_peer_s": visible,
            "cold_reads": cold,
        }))
    })
    .await??;
    for (daemon, mnt) in [(&mut a, "a-mnt"), (&mut b, "b-mnt")] {
        daemon
            .client
            .fs
            .unmount(v1::UnmountRequest {
                dir: tmp.path().join(mnt).display().to_string(),
            })
            .await
            .context("unmounting")?;
    }
    a.stop().await?;
    b.stop().await?;
    let f = |k: &str| figures[k].as_f64().unwrap_or(0.0);
    out.record(
        &format!(
            "fs: a {} MiB file through the mount: write {:.0} MB/s ({:.0}% of the local disk's {:.0}), read {:.0} MB/s ({:.0}% of {:.0}){}\n\
             \x20 {} × {} KiB files created by {} threads: {:.0}/s (local disk with fsync: {:.0}/s); by one thread: {:.0}/s\n\
             \x20 the last one readable and all listed through the other node's mount {:.2} s after it was closed",
            args.big_mib,
            f("write_mb_per_s"),
            100.0 * f("write_mb_per_s") / f("local_write_mb_per_s").max(1e-9),
            f("local_write_mb_per_s"),
            f("read_mb_per_s"),
            100.0 * f("read_mb_per_s") / f("local_read_mb_per_s").max(1e-9),
            f("local_read_mb_per_s"),
            if figures["cold_reads"] == true { "" } else { " (page cache not dropped: not root)" },
            args.small,
            args.small_kib,
            args.writers,
            f("small_files_per_s"),
            f("local_small_files_per_s"),
            f("small_files_per_s_one_writer"),
            f("visible_on_peer_s"),
        ),
        figures,
    );
    Ok(())
}
