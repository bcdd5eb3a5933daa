//! `lattice fs …` against two real daemons on loopback: a tree of files (names with spaces,
//! unicode, 255 bytes; small and blob-sized) put on one node reads back byte-identical on
//! the other, concurrent edits of one file end with the same listing and both versions on
//! both nodes, and the errors a script sees.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{fails_json, json, spawn_daemon};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Two running daemons, their data directories, and the store they share.
type TwoNodes = ([Daemon; 2], [PathBuf; 2], String);

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

fn names(dir: &Path, store: &str, path: &str) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    Ok(json(dir, &["fs", "ls", store, path])?["items"]
        .as_array()
        .ok_or("no items")?
        .iter()
        .filter_map(|i| i["name"].as_str().map(str::to_string))
        .collect())
}

/// Creates a filesystem store named `name` on the daemon at `dir`; returns its id.
fn create_fs_store(dir: &Path, name: &str) -> Result<String, Box<dyn std::error::Error>> {
    text(
        &json(dir, &["store", "create", "--type", "fs", "--name", name])?,
        "store",
    )
}

/// A daemon in `root/node` with a filesystem store: the daemon, its data directory, the store.
fn one_node(root: &Path) -> Result<(Daemon, PathBuf, String), Box<dyn std::error::Error>> {
    let dir = root.join("node");
    let daemon = Daemon(spawn_daemon(&dir, &[])?);
    let store = create_fs_store(&dir, "files")?;
    Ok((daemon, dir, store))
}

/// Daemons in `root/a` and `root/b`; A creates a filesystem store and B joins it.
fn two_nodes(root: &Path) -> Result<TwoNodes, Box<dyn std::error::Error>> {
    let dirs = ["a", "b"].map(|n| root.join(n));
    let daemons = [
        Daemon(spawn_daemon(&dirs[0], &[])?),
        Daemon(spawn_daemon(&dirs[1], &[])?),
    ];
    let store = create_fs_store(&dirs[0], "files")?;
    let token = text(&json(&dirs[0], &["store", "invite", &store])?, "token")?;
    json(&dirs[1], &["store", "join", &token])?;
    Ok((daemons, dirs, store))
}

/// Checks again until `check` holds (replication is asynchronous), for at most 30 s.
fn eventually(
    what: &str,
    mut check: impl FnMut() -> Result<bool, Box<dyn std::error::Error>>,
) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    // Each check is a CLI call (a process and an API round trip): no sleep needed between.
    while Instant::now() < deadline {
        if check().unwrap_or(false) {
            return Ok(());
        }
    }
    Err(format!("timed out waiting for {what}").into())
}

#[test]
fn files_put_on_one_daemon_read_back_identical_on_another_and_conflicts_keep_both() -> TestResult {
    let temp = tempfile::tempdir()?;
    let ([_a, _b], [a_dir, b_dir], store) = two_nodes(temp.path())?;

    let local = temp.path().join("local");
    std::fs::create_dir(&local)?;
    let long = "n".repeat(255);
    let files: Vec<(String, Vec<u8>)> = vec![
        ("docs/with space.txt".into(), b"hello".to_vec()),
        ("docs/ünïcødé ✓.md".into(), bytes(1000, 1)),
        (format!("docs/{long}"), bytes(10, 2)),
        ("docs/sub/empty".into(), Vec::new()),
        ("docs/sub/big.bin".into(), bytes(3 << 20, 3)),
    ];
    json(&a_dir, &["fs", "mkdir", "-p", &store, "docs/sub"])?;
    for (i, (path, data)) in files.iter().enumerate() {
        let file = local.join(format!("f{i}"));
        std::fs::write(&file, data)?;
        json(
            &a_dir,
            &["fs", "put", &store, &file.to_string_lossy(), path],
        )?;
    }
    let mut expected = names(&a_dir, &store, "docs")?;
    expected.sort();
    eventually("the tree on B", || {
        Ok(names(&b_dir, &store, "docs/sub")?.len() == 2)
    })?;
    assert_eq!(names(&b_dir, &store, "docs")?, expected);
    for (i, (path, data)) in files.iter().enumerate() {
        let out = local.join(format!("back{i}"));
        json(
            &b_dir,
            &["fs", "get", &store, path, "-o", &out.to_string_lossy()],
        )?;
        assert!(std::fs::read(&out)? == *data, "{path} differs on B");
    }

    // Both edit one file at once (each while the other's daemon is stopped, so neither sees
    // the other's edit first): both versions stay, under the same names on both nodes.
    let edit = |dir: &Path, what: &str| -> TestResult {
        let file = local.join(format!("edit-{what}"));
        std::fs::write(&file, what)?;
        json(
            dir,
            &[
                "fs",
                "put",
                &store,
                &file.to_string_lossy(),
                "docs/with space.txt",
            ],
        )?;
        Ok(())
    };
    drop(_b);
    edit(&a_dir, "from A")?;
    drop(_a);
    let _b = Daemon(spawn_daemon(&b_dir, &[])?);
    edit(&b_dir, "from B")?;
    let _a = Daemon(spawn_daemon(&a_dir, &[])?);
    eventually("the conflict on both", || {
        Ok(names(&a_dir, &store, "docs")?.len() == 5 && names(&b_dir, &store, "docs")?.len() == 5)
    })?;
    let listed = names(&a_dir, &store, "docs")?;
    assert_eq!(listed, names(&b_dir, &store, "docs")?);
    let copy = listed
        .iter()
        .find(|n| n.starts_with("with space.txt.conflict-"))
        .ok_or("no conflict copy")?;
    let mut versions = Vec::new();
    for path in ["docs/with space.txt".to_string(), format!("docs/{copy}")] {
        let out = local.join("version");
        json(
            &a_dir,
            &["fs", "get", &store, &path, "-o", &out.to_string_lossy()],
        )?;
        versions.push(std::fs::read_to_string(&out)?);
    }
    versions.sort();
    assert_eq!(versions, ["from A", "from B"]);

    // Errors a script sees.
    let (_, error) = fails_json(&a_dir, &["fs", "get", &store, "docs/missing", "-o", "x"])?;
    assert!(
        error["error"]
            .as_str()
            .unwrap_or_default()
            .contains("ENOENT"),
        "{error}"
    );
    let (_, error) = fails_json(&a_dir, &["fs", "rm", &store, "docs"])?;
    assert!(
        error["error"]
            .as_str()
            .unwrap_or_default()
            .contains("ENOTEMPTY"),
        "{error}"
    );
    let kv = text(
        &json(&a_dir, &["store", "create", "--type", "kv", "--name", "kv"])?,
        "store",
    )?;
    let (_, error) = fails_json(&a_dir, &["fs", "put", &kv, "-", "x"])?;
    assert_eq!(error["code"], "invalid_argument", "{error}");
    // Removing the tree empties it on both.
    json(&a_dir, &["fs", "rm", "-r", &store, "docs"])?;
    eventually("the removal on B", || {
        Ok(names(&b_dir, &store, "/")?.is_empty())
    })?;
    Ok(())
}

/// Paths under a folder (directories with a trailing `/`) with their bytes, sorted.
type Tree = Vec<(String, Vec<u8>)>;

/// Every file under `root` (the sync's own `.lattice-*` files left out) with its bytes.
fn tree(root: &Path) -> Result<Tree, Box<dyn std::error::Error>> {
    let mut found = Vec::new();
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".lattice-") {
                continue;
            }
            let path = format!("{prefix}{name}");
            if entry.file_type()?.is_dir() {
                found.push((format!("{path}/"), Vec::new()));
                pending.push((entry.path(), format!("{path}/")));
            } else {
                found.push((path, std::fs::read(entry.path())?));
            }
        }
    }
    found.sort();
    Ok(found)
}

#[test]
fn fs_sync_mirrors_folders_on_two_daemons_both_ways_and_keeps_both_edits() -> TestResult {
    let temp = tempfile::tempdir()?;
    let (_daemons, [a_dir, b_dir], store) = two_nodes(temp.path())?;
    let [fa, fb] = ["folder-a", "folder-b"].map(|n| temp.path().join(n));
    let sync =
        |dir: &Path, folder: &Path| json(dir, &["fs", "sync", &store, &folder.to_string_lossy()]);

    // A tree in A's folder goes to the store, then into B's folder, byte for byte.
    std::fs::create_dir_all(fa.join("docs/sub"))?;
    std::fs::create_dir_all(fa.join("empty dir"))?;
    std::fs::write(fa.join("docs/with space.txt"), "hello")?;
    std::fs::write(fa.join("docs/ünïcødé ✓.md"), bytes(1000, 1))?;
    std::fs::write(fa.join("docs/sub/big.bin"), bytes(300 << 10, 2))?;
    std::fs::write(fa.join("top"), "")?;
    let report = sync(&a_dir, &fa)?;
    assert_eq!(
        report["to_store"].as_array().map(Vec::len),
        Some(7),
        "{report}"
    );
    assert_eq!(sync(&a_dir, &fa)?["to_store"], serde_json::json!([]));
    let want = tree(&fa)?;
    eventually("A's folder in B's", || {
        sync(&b_dir, &fb)?;
        Ok(tree(&fb)? == want)
    })?;

    // On B: a file removed, one edited, one added, a directory removed; A gets all four.
    std::fs::remove_file(fb.join("top"))?;
    std::fs::write(fb.join("docs/with space.txt"), "edited on B")?;
    std::fs::write(fb.join("docs/sub/new"), "new on B")?;
    std::fs::remove_dir(fb.join("empty dir"))?;
    let report = sync(&b_dir, &fb)?;
    assert_eq!(
        report["removed_from_store"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    let want = tree(&fb)?;
    eventually("B's changes in A's folder", || {
        sync(&a_dir, &fa)?;
        Ok(tree(&fa)? == want)
    })?;

    // Both edit one file: A's reaches the store first; B's stays beside it, on both sides.
    std::fs::write(fa.join("docs/with space.txt"), "from A")?;
    sync(&a_dir, &fa)?;
    eventually("A's edit in B's store", || {
        let out = temp.path().join("peek");
        json(
            &b_dir,
            &[
                "fs",
                "get",
                &store,
                "docs/with space.txt",
                "-o",
                &out.to_string_lossy(),
            ],
        )?;
        Ok(std::fs::read(&out)? == b"from A")
    })?;
    std::fs::write(fb.join("docs/with space.txt"), "from B")?;
    let report = sync(&b_dir, &fb)?;
    assert_eq!(
        report["conflicts"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    let kept = report["conflicts"][0]
        .as_str()
        .ok_or("no conflict name")?
        .to_string();
    assert!(
        kept.starts_with("docs/with space.txt.conflict-local-"),
        "{kept}"
    );
    assert_eq!(std::fs::read(fb.join("docs/with space.txt"))?, b"from A");
    assert_eq!(std::fs::read(fb.join(&kept))?, b"from B");
    let want = tree(&fb)?;
    eventually("both versions in A's folder", || {
        sync(&a_dir, &fa)?;
        Ok(tree(&fa)? == want)
    })?;

    // A folder synced with one store refuses another.
    let other = create_fs_store(&a_dir, "other")?;
    let (_, error) = fails_json(&a_dir, &["fs", "sync", &other, &fa.to_string_lossy()])?;
    assert_eq!(error["code"], "invalid_argument", "{error}");
    assert!(
        error["error"]
            .as_str()
            .unwrap_or_default()
            .contains("is synced with store"),
        "{error}"
    );
    Ok(())
}

#[test]
fn fs_sync_watch_keeps_a_folder_in_step_until_interrupted() -> TestResult {
    let temp = tempfile::tempdir()?;
    let (_daemon, dir, store) = one_node(temp.path())?;
    let folder = temp.path().join("folder");
    let watcher = std::process::Command::new(env!("CARGO_BIN_EXE_lattice"))
        .arg("--data-dir")
        .arg(&dir)
        .args(["--json", "fs", "sync", &store])
        .arg(&folder)
        .args(["--watch", "--interval", "0.1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut watcher = Daemon(watcher);

    // Written into the store: it shows in the folder.
    let source = temp.path().join("source");
    std::fs::write(&source, "put through the API")?;
    json(
        &dir,
        &["fs", "put", &store, &source.to_string_lossy(), "from-api"],
    )?;
    eventually("the store's file in the folder", || {
        Ok(std::fs::read(folder.join("from-api")).is_ok_and(|b| b == b"put through the API"))
    })?;
    // Written into the folder: it shows in the store.
    std::fs::write(folder.join("from-folder"), "written in the folder")?;
    eventually("the folder's file in the store", || {
        Ok(names(&dir, &store, "/")?.contains(&"from-folder".to_string()))
    })?;
    // Removed from the folder: removed from the store.
    std::fs::remove_file(folder.join("from-api"))?;
    eventually("the removal in the store", || {
        Ok(!names(&dir, &store, "/")?.contains(&"from-api".to_string()))
    })?;

    // Ctrl-C ends it cleanly.
    let pid = i32::try_from(watcher.0.id())?;
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    let status = watcher.0.wait()?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[test]
fn fs_sync_keeps_what_a_replaced_directory_held_and_writes_nothing_through_a_link() -> TestResult {
    let temp = tempfile::tempdir()?;
    let (_daemon, dir, store) = one_node(temp.path())?;
    // Two folders synced with one store stand for two people's copies.
    let [one, two] = ["one", "two"].map(|n| temp.path().join(n));
    let sync = |folder: &Path| json(&dir, &["fs", "sync", &store, &folder.to_string_lossy()]);
    std::fs::create_dir_all(one.join("d"))?;
    std::fs::write(one.join("d/x"), "x")?;
    std::fs::create_dir_all(one.join("e"))?;
    std::fs::write(one.join("e/y"), "y")?;
    sync(&one)?;
    sync(&two)?;
    assert_eq!(std::fs::read(two.join("d/x"))?, b"x");

    // Two replaces the directory d with a file while one adds a file into d: one's new file
    // is kept (its folder moved aside and sent up), the store's file takes the name.
    std::fs::remove_dir_all(two.join("d"))?;
    std::fs::write(two.join("d"), "d is a file now")?;
    sync(&two)?;
    assert_eq!(
        json(&dir, &["fs", "stat", &store, "d"])?["kind"],
        "file",
        "the folder's file replaced the store's directory"
    );
    std::fs::write(one.join("d/new"), "added in one")?;
    let report = sync(&one)?;
    assert_eq!(report["failed"], serde_json::json!([]), "{report}");
    assert_eq!(std::fs::read(one.join("d"))?, b"d is a file now");
    let kept = report["conflicts"][0]
        .as_str()
        .ok_or_else(|| format!("no conflict in {report}"))?
        .to_string();
    assert!(kept.starts_with("d.conflict-local-"), "{report}");
    sync(&one)?;
    sync(&two)?;
    assert_eq!(std::fs::read(two.join(&kept).join("new"))?, b"added in one");
    assert_eq!(std::fs::read(two.join(&kept).join("x"))?, b"x");

    // One replaces the directory e with a file while two adds a file into e: e stays a
    // directory with two's file, and one's file is kept beside it.
    std::fs::write(two.join("e/z"), "added in two")?;
    sync(&two)?;
    std::fs::remove_dir_all(one.join("e"))?;
    std::fs::write(one.join("e"), "e is a file in one")?;
    let report = sync(&one)?;
    assert_eq!(report["failed"], serde_json::json!([]), "{report}");
    let kept = report["conflicts"][0]
        .as_str()
        .ok_or_else(|| format!("no conflict in {report}"))?
        .to_string();
    sync(&one)?;
    assert_eq!(std::fs::read(one.join("e/z"))?, b"added in two");
    assert_eq!(std::fs::read(one.join(&kept))?, b"e is a file in one");

    // A name of the sync's own (`.lattice-…`) in the store is left alone, both ways.
    let source = temp.path().join("source");
    std::fs::write(&source, "not the sync's state")?;
    json(
        &dir,
        &[
            "fs",
            "put",
            &store,
            &source.to_string_lossy(),
            ".lattice-sync.json",
        ],
    )?;
    sync(&one)?;
    sync(&one)?;
    assert!(names(&dir, &store, "/")?.contains(&".lattice-sync.json".to_string()));
    assert_ne!(
        std::fs::read(one.join(".lattice-sync.json"))?,
        b"not the sync's state"
    );

    // A folder that is a symbolic link in one's folder: the store's files under that name
    // are not written through it.
    let outside = temp.path().join("outside");
    std::fs::create_dir_all(&outside)?;
    std::os::unix::fs::symlink(&outside, one.join("linked"))?;
    json(&dir, &["fs", "mkdir", &store, "linked"])?;
    json(
        &dir,
        &[
            "fs",
            "put",
            &store,
            &source.to_string_lossy(),
            "linked/file",
        ],
    )?;
    let report = sync(&one)?;
    assert!(
        report["skipped"]
            .as_array()
            .is_some_and(|s| s.contains(&serde_json::json!("linked"))),
        "{report}"
    );
    assert_eq!(std::fs::read_dir(&outside)?.count(), 0, "{report}");

    // A second sync of a folder while one runs is refused, and says why.
    let held = std::fs::File::open(one.join(".lattice-sync.lock"))?;
    held.try_lock()?;
    let (code, error) = fails_json(&dir, &["fs", "sync", &store, &one.to_string_lossy()])?;
    assert_ne!(code, 0);
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("another `lattice fs sync` is running")),
        "{error}"
    );
    drop(held);

    // A peer's set-user-id bit is not taken into the folder.
    json(
        &dir,
        &[
            "fs",
            "put",
            &store,
            &source.to_string_lossy(),
            "setuid",
            "--mode",
            "4755",
        ],
    )?;
    sync(&two)?;
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(two.join("setuid"))?.permissions().mode() & 0o7777,
        0o755
    );
    Ok(())
}

#[test]
fn fs_sync_keeps_a_file_added_into_a_directory_a_peer_removed_meanwhile() -> TestResult {
    let temp = tempfile::tempdir()?;
    let ([a, b], [a_dir, b_dir], store) = two_nodes(temp.path())?;
    let [fa, fb] = ["folder-a", "folder-b"].map(|n| temp.path().join(n));
    let sync =
        |dir: &Path, folder: &Path| json(dir, &["fs", "sync", &store, &folder.to_string_lossy()]);
    std::fs::create_dir_all(fa.join("d"))?;
    std::fs::write(fa.join("d/x"), "x")?;
    sync(&a_dir, &fa)?;
    eventually("d/x in B's folder", || {
        sync(&b_dir, &fb)?;
        Ok(std::fs::read(fb.join("d/x")).is_ok_and(|b| b == b"x"))
    })?;

    // B is down: A removes the directory.
    drop(b);
    std::fs::remove_dir_all(fa.join("d"))?;
    let report = sync(&a_dir, &fa)?;
    assert_eq!(
        report["removed_from_store"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    // A is down: B, not having seen that, adds a file into it.
    drop(a);
    let _b = Daemon(spawn_daemon(&b_dir, &[])?);
    std::fs::write(fb.join("d/new"), "added on B")?;
    sync(&b_dir, &fb)?;
    let _a = Daemon(spawn_daemon(&a_dir, &[])?);

    // Once each has the other's writes, the directory stays with B's file (it is listed as
    // removed, holding what was added), and both folders hold that file.
    eventually("B's file in A's folder", || {
        sync(&a_dir, &fa)?;
        Ok(std::fs::read(fa.join("d/new")).is_ok_and(|b| b == b"added on B"))
    })?;
    eventually("A's removal on B", || {
        Ok(json(&b_dir, &["fs", "stat", &store, "d"])?["removed"] == true)
    })?;
    sync(&b_dir, &fb)?;
    assert_eq!(std::fs::read(fb.join("d/new"))?, b"added on B");
    assert!(
        !fb.join("d/x").exists(),
        "A's removal of d/x reached B's folder"
    );
    Ok(())
}
