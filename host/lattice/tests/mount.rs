//! `lattice fs mount` against two real daemons on loopback (FUSE): a tree copied into A's
//! mount reads back byte-identical from B's mount, real programs (`tar`, `git`) run on a
//! mount, edits made apart on two mounts keep both versions, a kill in the middle of a copy
//! loses no closed file, a sparse 1 GiB file round-trips, and a mount a killed daemon left
//! behind is taken down when it starts again.
//!
//! Needs /dev/fuse and fusermount3 (CI installs fuse3); without them each test says so and
//! passes (the CLI path without a mount is tested in `fs.rs`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{json, spawn_daemon};

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether FUSE mounts can work here; says why not when they cannot.
#[allow(
    clippy::print_stderr,
    reason = "a skipped test says why on the test's output"
)]
fn fuse_available() -> bool {
    let device = Path::new("/dev/fuse").exists();
    let helper = Command::new("fusermount3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !(device && helper) {
        eprintln!(
            "skipped: FUSE is not available here (/dev/fuse: {device}, fusermount3: {helper}); install fuse3"
        );
    }
    device && helper
}

fn text(v: &Value, field: &str) -> Result<String, Box<dyn std::error::Error>> {
    Ok(v[field]
        .as_str()
        .ok_or_else(|| format!("no {field} in {v}"))?
        .to_string())
}

/// Deterministic bytes that differ in every position.
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Checks again until `check` holds, for at most 30 s (each check reads the mount).
fn eventually(what: &str, mut check: impl FnMut() -> bool) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::yield_now();
    }
    Err(format!("timed out waiting for {what}").into())
}

fn run(dir: &Path, program: &str, args: &[&str]) -> TestResult {
    let out = Command::new(program).args(args).current_dir(dir).output()?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

fn mount(dir: &Path, store: &str, mnt: &Path) -> TestResult {
    json(dir, &["fs", "mount", store, &mnt.to_string_lossy()])?;
    Ok(())
}

/// Two daemons sharing one filesystem store, each mounting it.
struct Pair {
    daemons: [Daemon; 2],
    store: String,
    /// Data directories of A and B.
    dirs: [PathBuf; 2],
    /// A's and B's mounts.
    mounts: [PathBuf; 2],
}

/// Starts daemons A and B under `root`, creates a filesystem store on A, has B join it, and
/// mounts it on both.
fn fs_store_mounted_on_two(root: &Path) -> Result<Pair, Box<dyn std::error::Error>> {
    let dirs = ["a", "b"].map(|n| root.join(n));
    let daemons = [
        Daemon(spawn_daemon(&dirs[0], &[])?),
        Daemon(spawn_daemon(&dirs[1], &[])?),
    ];
    let store = text(
        &json(
            &dirs[0],
            &["store", "create", "--type", "fs", "--name", "files"],
        )?,
        "store",
    )?;
    let token = text(&json(&dirs[0], &["store", "invite", &store])?, "token")?;
    json(&dirs[1], &["store", "join", &token])?;
    let mounts = ["a-mnt", "b-mnt"].map(|n| root.join(n));
    for (dir, mnt) in dirs.iter().zip(&mounts) {
        std::fs::create_dir(mnt)?;
        mount(dir, &store, mnt)?;
    }
    Ok(Pair {
        daemons,
        store,
        dirs,
        mounts,
    })
}

/// One daemon in `root` with a filesystem store named `name` mounted on `root/mnt`: the
/// daemon, its data directory and the mount.
fn fs_store_mounted_on_one(
    root: &Path,
    name: &str,
) -> Result<(Daemon, PathBuf, PathBuf), Box<dyn std::error::Error>> {
    let dir = root.join("node");
    let daemon = Daemon(spawn_daemon(&dir, &[])?);
    let store = text(
        &json(&dir, &["store", "create", "--type", "fs", "--name", name])?,
        "store",
    )?;
    let mnt = root.join("mnt");
    std::fs::create_dir(&mnt)?;
    mount(&dir, &store, &mnt)?;
    Ok((daemon, dir, mnt))
}

#[test]
fn a_tree_copied_into_one_mount_reads_back_identical_from_another() -> TestResult {
    if !fuse_available() {
        return Ok(());
    }
    let temp = tempfile::tempdir()?;
    let Pair {
        daemons: _daemons,
        store: _,
        dirs: [a_dir, b_dir],
        mounts: [a_mnt, b_mnt],
    } = fs_store_mounted_on_two(temp.path())?;

    // A tree with awkward names, small and large files, written through A's mount.
    let long = "n".repeat(255);
    let files: Vec<(String, Vec<u8>)> = vec![
        ("top.txt".into(), b"top".to_vec()),
        ("docs/with space.txt".into(), bytes(100, 1)),
        ("docs/ünïcødé ✓.md".into(), bytes(5000, 2)),
        (format!("docs/{long}"), bytes(10, 3)),
        ("docs/deep/er/empty".into(), Vec::new()),
        ("docs/deep/big.bin".into(), bytes(5 << 20, 4)),
    ];
    for (path, data) in &files {
        let target = a_mnt.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, data)?;
    }
    // B's mount shows the same tree, byte for byte (the big file fetched from A on read).
    for (path, data) in &files {
        let there = b_mnt.join(path);
        eventually(&format!("{path} on B"), || {
            std::fs::metadata(&there).is_ok_and(|m| m.len() == data.len() as u64)
        })?;
        assert!(std::fs::read(&there)? == *data, "{path} differs on B");
    }
    // Renames and removals travel too.
    std::fs::rename(a_mnt.join("top.txt"), a_mnt.join("docs/moved.txt"))?;
    std::fs::remove_file(a_mnt.join(format!("docs/{long}")))?;
    eventually("the rename on B", || b_mnt.join("docs/moved.txt").exists())?;
    eventually("the removal on B", || {
        !b_mnt.join(format!("docs/{long}")).exists()
    })?;
    assert!(!b_mnt.join("top.txt").exists());

    // Real programs: tar a tree in and out, byte-identical; git init, add, commit.
    let src = temp.path().join("src");
    std::fs::create_dir_all(src.join("sub"))?;
    for i in 0..20 {
        std::fs::write(src.join(format!("sub/f{i}")), bytes(i * 700, i as u8))?;
    }
    let archive = temp.path().join("src.tar");
    run(
        temp.path(),
        "tar",
        &["-cf", &archive.to_string_lossy(), "src"],
    )?;
    run(&a_mnt, "tar", &["-xf", &archive.to_string_lossy()])?;
    let back = temp.path().join("back.tar");
    run(&a_mnt, "tar", &["-cf", &back.to_string_lossy(), "src"])?;
    let out = temp.path().join("out");
    std::fs::create_dir(&out)?;
    run(&out, "tar", &["-xf", &back.to_string_lossy()])?;
    for i in 0..20 {
        let name = format!("src/sub/f{i}");
        assert!(
            std::fs::read(out.join(&name))? == std::fs::read(temp.path().join(&name))?,
            "{name} changed through the mount"
        );
    }
    let repo = a_mnt.join("repo");
    std::fs::create_dir(&repo)?;
    std::fs::write(repo.join("README"), "hello\n")?;
    run(&repo, "git", &["init", "-q"])?;
    run(&repo, "git", &["add", "README"])?;
    run(
        &repo,
        "git",
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "commit",
            "-q",
            "-m",
            "first",
        ],
    )?;
    run(&repo, "git", &["log", "--oneline"])?;
    let log = Command::new("git")
        .args(["log", "--format=%s"])
        .current_dir(&repo)
        .output()?;
    assert_eq!(String::from_utf8_lossy(&log.stdout).trim(), "first");

    for (dir, mnt) in [(&a_dir, &a_mnt), (&b_dir, &b_mnt)] {
        json(dir, &["fs", "umount", &mnt.to_string_lossy()])?;
        assert!(
            std::fs::read_dir(mnt)?.next().is_none(),
            "unmounted: the folder is empty again"
        );
    }
    Ok(())
}

#[test]
fn a_mount_left_by_a_killed_daemon_is_taken_down_when_it_starts_again() -> TestResult {
    if !fuse_available() {
        return Ok(());
    }
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("node");
    let mnt = temp.path().join("mnt");
    std::fs::create_dir(&mnt)?;
    let daemon = Daemon(spawn_daemon(&dir, &[])?);
    let store = text(
        &json(
            &dir,
            &["store", "create", "--type", "fs", "--name", "files"],
        )?,
        "store",
    )?;
    json(&dir, &["fs", "mount", &store, &mnt.to_string_lossy()])?;
    std::fs::write(mnt.join("kept.txt"), "closed before the kill")?;
    drop(daemon); // SIGKILL: the mount stays behind, its server gone.
    let again = Daemon(spawn_daemon(&dir, &[])?);
    let mounts = json(&dir, &["fs", "mounts"])?;
    assert_eq!(
        mounts["items"].as_array().map(Vec::len),
        Some(0),
        "{mounts}"
    );
    // The folder is usable again, and the file closed before the kill is in the store.
    json(&dir, &["fs", "mount", &store, &mnt.to_string_lossy()])?;
    assert_eq!(
        std::fs::read_to_string(mnt.join("kept.txt"))?,
        "closed before the kill"
    );
    json(&dir, &["node", "stop"])?;
    drop(again);
    assert!(
        std::fs::read_dir(&mnt)?.next().is_none(),
        "the daemon unmounted as it stopped"
    );
    Ok(())
}

/// The names in folder `dir`, sorted (none when it cannot be read).
fn listing(dir: &Path) -> Vec<String> {
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

#[test]
fn edits_made_apart_on_two_mounts_keep_both_and_a_kill_mid_copy_loses_no_closed_file() -> TestResult
{
    use std::io::Write as _;
    if !fuse_available() {
        return Ok(());
    }
    let temp = tempfile::tempdir()?;
    let Pair {
        daemons: [a, b],
        store,
        dirs: [a_dir, b_dir],
        mounts: [a_mnt, b_mnt],
    } = fs_store_mounted_on_two(temp.path())?;
    std::fs::write(a_mnt.join("shared.txt"), "first")?;
    eventually("shared.txt on B", || {
        std::fs::read_to_string(b_mnt.join("shared.txt")).is_ok_and(|t| t == "first")
    })?;

    // B is down: A edits the shared file, saves twenty files, and is killed while a large
    // copy is still being written.
    drop(b);
    std::fs::write(a_mnt.join("shared.txt"), "from A")?;
    for i in 0..20 {
        std::fs::write(a_mnt.join(format!("closed-{i}")), bytes(3000 + i, i as u8))?;
    }
    let (copying, copied_some) = std::sync::mpsc::channel();
    let big = a_mnt.join("big.bin");
    let copier = std::thread::spawn(move || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&big)?;
        let chunk = vec![7u8; 1 << 20];
        for i in 0..4096 {
            file.write_all(&chunk)?;
            if i == 8 {
                let _ = copying.send(());
            }
        }
        Ok(())
    });
    copied_some.recv_timeout(Duration::from_secs(60))?;
    drop(a); // SIGKILL in the middle of the copy
    let copy = copier.join().map_err(|_| "the copier panicked")?;
    assert!(copy.is_err(), "the copy fails once its daemon is gone");

    // A is down: B edits the same file, not having seen A's edit.
    let b = Daemon(spawn_daemon(&b_dir, &[])?);
    mount(&b_dir, &store, &b_mnt)?;
    std::fs::write(b_mnt.join("shared.txt"), "from B")?;
    let a = Daemon(spawn_daemon(&a_dir, &[])?);
    mount(&a_dir, &store, &a_mnt)?;

    // Every file closed before the kill is there; the copy never closed is not.
    for i in 0..20 {
        assert!(
            std::fs::read(a_mnt.join(format!("closed-{i}")))? == bytes(3000 + i, i as u8),
            "closed-{i} after the kill"
        );
    }
    assert!(
        !a_mnt.join("big.bin").exists(),
        "a file never closed is not saved"
    );

    // Both mounts converge on one listing: the later edit under the name, the other beside
    // it as a conflict copy.
    eventually(
        "the same listing with a conflict copy on both mounts",
        || {
            let (on_a, on_b) = (listing(&a_mnt), listing(&b_mnt));
            on_a == on_b
                && on_a.len() == 22
                && on_a.iter().any(|n| n.starts_with("shared.txt.conflict-"))
        },
    )?;
    let copy = listing(&a_mnt)
        .into_iter()
        .find(|n| n.starts_with("shared.txt.conflict-"))
        .ok_or("no conflict copy")?;
    for mnt in [&a_mnt, &b_mnt] {
        let mut versions = vec![
            std::fs::read_to_string(mnt.join("shared.txt"))?,
            std::fs::read_to_string(mnt.join(&copy))?,
        ];
        versions.sort();
        assert_eq!(versions, ["from A", "from B"]);
    }
    for (dir, mnt) in [(&a_dir, &a_mnt), (&b_dir, &b_mnt)] {
        json(dir, &["fs", "umount", &mnt.to_string_lossy()])?;
    }
    drop((a, b));
    Ok(())
}

/// BLAKE3 of a file, read as a stream.
fn hash_of(path: &Path) -> Result<blake3::Hash, Box<dyn std::error::Error>> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize())
}

#[test]
fn a_sparse_one_gib_file_round_trips_through_a_mount() -> TestResult {
    use std::os::unix::fs::FileExt as _;
    if !fuse_available() {
        return Ok(());
    }
    let temp = tempfile::tempdir()?;
    let (_daemon, dir, mnt) = fs_store_mounted_on_one(temp.path(), "big")?;
    // 1 GiB, mostly a hole, with marks at the start, across a window edge and at the end.
    let size = 1u64 << 30;
    let source = temp.path().join("sparse");
    let file = std::fs::File::create(&source)?;
    file.set_len(size)?;
    for at in [0, (1 << 20) - 3, 512 << 20, size - 5] {
        file.write_all_at(b"mark!", at)?;
    }
    drop(file);
    let copy = mnt.join("sparse");
    std::fs::copy(&source, &copy)?;
    assert_eq!(std::fs::metadata(&copy)?.len(), size);
    assert_eq!(
        hash_of(&copy)?,
        hash_of(&source)?,
        "the bytes read back differ"
    );
    let mut end = [0u8; 5];
    std::fs::File::open(&copy)?.read_exact_at(&mut end, size - 5)?;
    assert_eq!(&end, b"mark!");
    json(&dir, &["fs", "umount", &mnt.to_string_lossy()])?;
    Ok(())
}

/// Files under `dir`, at any depth.
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                files_under(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn a_large_file_written_on_after_fsync_keeps_every_byte() -> TestResult {
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;
    if !fuse_available() {
        return Ok(());
    }
    let temp = tempfile::tempdir()?;
    let (_daemon, dir, mnt) = fs_store_mounted_on_one(temp.path(), "log")?;

    let path = mnt.join("log.bin");
    let mut expected = bytes(3 << 20, 7);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    file.write_all(&expected)?;
    // The commit moves the handle's bytes into the blob store; the handle reads them on and
    // writes on from a copy.
    file.sync_all()?;
    let mut back = vec![0; 4096];
    file.read_exact_at(&mut back, (2 << 20) + 5)?;
    assert_eq!(back, expected[(2 << 20) + 5..(2 << 20) + 5 + 4096]);
    file.write_all_at(b"patched", 1 << 20)?;
    expected[1 << 20..(1 << 20) + 7].copy_from_slice(b"patched");
    let tail = bytes(100_000, 8);
    file.write_all_at(&tail, 3 << 20)?;
    expected.extend_from_slice(&tail);
    assert_eq!(file.metadata()?.len(), expected.len() as u64);
    file.sync_all()?;
    file.write_all_at(b"again", 0)?;
    expected[..5].copy_from_slice(b"again");
    drop(file);
    assert_eq!(
        std::fs::read(&path)?,
        expected,
        "the bytes read back differ"
    );
    // Nothing is left in the spool folder once the handle is closed.
    assert_eq!(files_under(&dir.join("spool")), 0);
    json(&dir, &["fs", "umount", &mnt.to_string_lossy()])?;
    Ok(())
}
