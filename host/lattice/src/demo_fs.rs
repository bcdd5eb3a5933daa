//! `lattice demo --fs`: file sync on two real daemons on loopback, each mounting one
//! filesystem store (FUSE). A photo copied into node A's folder appears in node B's; then
//! both edit one file while apart, and both folders end with the same two versions (the
//! later under the name, the other as a conflict copy).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::bench_daemon::{Daemon, create_typed, invite_and_join};
use crate::bench_fs::mount;
use crate::cli::DemoArgs;
use crate::output::Output;

/// How long the demo waits for a file or a conflict to show on the other node.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs the demo.
pub(crate) async fn demo(args: DemoArgs, out: &Output) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("lattice-demo-fs-")
        .tempdir()?;
    let root = temp.path().to_path_buf();
    out.progress(
        "lattice demo --fs: two daemons on loopback, one filesystem store mounted on each (FUSE)",
    );
    let (a_dir, b_dir) = (root.join("node-a"), root.join("node-b"));
    let (a_mnt, b_mnt) = (root.join("A"), root.join("B"));
    let mut a = Daemon::start(&a_dir).await?;
    let mut b = Daemon::start(&b_dir).await?;
    let store = create_typed(&mut a.client, "fs", "photos").await?;
    invite_and_join(&mut a, &mut b, &store).await?;
    mount(&mut a, &store, &a_mnt).await?;
    mount(&mut b, &store, &b_mnt).await?;
    out.progress(&format!(
        "store {} mounted on {} (node A) and {} (node B)",
        &store[..8],
        a_mnt.display(),
        b_mnt.display()
    ));

    // 1. cp photo.jpg into A's folder; it shows, identical, in B's.
    let photo: Vec<u8> = (0..3u32 << 20)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect();
    let source = root.join("photo.jpg");
    std::fs::write(&source, &photo)?;
    let (from, to) = (a_mnt.join("photo.jpg"), b_mnt.join("photo.jpg"));
    let photo_s = blocking(move || {
        std::fs::copy(&source, &from).context("copying photo.jpg into A's folder")?;
        let copied = Instant::now();
        wait_for("photo.jpg in B's folder", || {
            std::fs::read(&to).is_ok_and(|bytes| bytes == photo)
        })?;
        Ok(copied.elapsed().as_secs_f64())
    })
    .await?;
    out.progress(&format!(
        "cp photo.jpg A/ (3 MiB): identical in B/ {photo_s:.2} s later"
    ));

    // 2. Both edit notes.txt while apart: B is down while A edits, A while B does.
    let notes = "notes.txt";
    std::fs::write(a_mnt.join(notes), "shopping list\n")?;
    let shared = b_mnt.join(notes);
    blocking(move || {
        wait_for("notes.txt in B's folder", || shared.exists())?;
        Ok(())
    })
    .await?;
    b.stop().await?;
    std::fs::write(a_mnt.join(notes), "shopping list\n- milk (A)\n")?;
    a.stop().await?;
    let mut b = Daemon::start(&b_dir).await?;
    mount(&mut b, &store, &b_mnt).await?;
    std::fs::write(b_mnt.join(notes), "shopping list\n- bread (B)\n")?;
    let mut a = Daemon::start(&a_dir).await?;
    mount(&mut a, &store, &a_mnt).await?;
    out.progress(
        "notes.txt edited on A while B was down, then on B while A was down; both up again",
    );
    let (on_a, on_b) = (a_mnt.clone(), b_mnt.clone());
    let (settled_s, listing) = blocking(move || {
        let started = Instant::now();
        let mut listing = Vec::new();
        wait_for("the same folder with a conflict copy on both nodes", || {
            listing = names(&on_a);
            listing == names(&on_b) && listing.iter().any(|n| n.starts_with("notes.txt.conflict-"))
        })?;
        Ok((started.elapsed().as_secs_f64(), listing))
    })
    .await?;
    let copy = listing
        .iter()
        .find(|n| n.starts_with("notes.txt.conflict-"))
        .context("no conflict copy")?
        .clone();
    let mut versions = Vec::new();
    for (node, mnt) in [("A", &a_mnt), ("B", &b_mnt)] {
        let kept = std::fs::read_to_string(mnt.join(notes))?;
        let other = std::fs::read_to_string(mnt.join(&copy))?;
        versions.push(json!({"node": node, "notes.txt": kept, "conflict_copy": other}));
    }
    let agree = versions[0]["notes.txt"] == versions[1]["notes.txt"]
        && versions[0]["conflict_copy"] == versions[1]["conflict_copy"];
    let text = format!(
        "both folders after {settled_s:.2} s: {}\n  notes.txt (the later edit) = {:?}\n  {copy} (the other) = {:?}\n  the same on A and B: {}",
        listing.join("  "),
        versions[0]["notes.txt"].as_str().unwrap_or_default(),
        versions[0]["conflict_copy"].as_str().unwrap_or_default(),
        if agree { "yes" } else { "NO" },
    );
    out.record(
        &text,
        json!({
            "store": store,
            "photo_bytes": 3u64 << 20,
            "photo_visible_s": photo_s,
            "conflict_settled_s": settled_s,
            "listing": listing,
            "conflict_copy": copy,
            "versions": versions,
            "agree": agree,
        }),
    );
    a.stop().await?;
    b.stop().await?;
    if args.keep {
        let path = temp.keep();
        out.progress(&format!("data directories kept in {}", path.display()));
    }
    if !agree {
        bail!("the two nodes do not agree");
    }
    Ok(())
}

/// Runs `f` on a blocking thread (it reads the mounts).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Checks again until `check` holds, for at most [`DEADLINE`].
fn wait_for(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        if Instant::now() > deadline {
            bail!("{what}: not within {} s", DEADLINE.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The names in folder `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
