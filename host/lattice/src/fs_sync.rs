//! `lattice fs sync <store> <dir>`: mirrors a folder and a filesystem store both ways through
//! the node's API, without a mount. Each round compares the folder and the store with what
//! the last round left them as (kept in `<dir>/.lattice-sync.json`), so it can tell a file
//! added on one side from one removed on the other:
//!
//! - changed on one side only: the change is made on the other side (written, created,
//!   removed);
//! - changed on both: an edit outlives a removal (the removed side gets the file back); two
//!   different edits of one file keep the store's under the name and the folder's beside it as
//!   `NAME.conflict-local-<ms>`, written to the store too — nothing is lost;
//! - the store's conflict copies (`NAME.conflict-<peer>-<ms>`) come down read-only; they are
//!   the store's to drop (writing the file or `resolve` ends them).
//!
//! Symbolic links and names beginning with `.lattice-` (this file, temporary files) are not
//! synced. A round's cost is a listing of both trees plus the files that changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::Client;
use crate::fs_cmd::{call, ensure_fs, get, put};
use crate::output::{CliError, Output};

/// The state file in the synced folder.
const STATE_FILE: &str = ".lattice-sync.json";

/// Held locked by the sync running on the folder, so a second one refuses to start.
const LOCK_FILE: &str = ".lattice-sync.lock";

/// Names with this prefix are the sync's own files (state, temporary downloads): never synced.
const OWN_PREFIX: &str = ".lattice-";

/// The temporary files of a sync (downloads, comparisons, the state being written), by
/// prefix. One left by an interrupted run would keep its folder from being removed.
const TEMP_PREFIXES: [&str; 4] = [
    ".lattice-get-",
    ".lattice-fs-",
    ".lattice-compare-",
    ".lattice-sync-",
];

/// How old a temporary file is before a round takes it for one an interrupted run left.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Removes `path` when it is a temporary file of a sync older than [`STALE_TEMP`].
fn remove_if_stale(path: &Path, name: &str) {
    if !TEMP_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return;
    }
    let stale = std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_TEMP);
    if stale {
        let _ = std::fs::remove_file(path);
    }
}

/// An entry of the folder as a round saw it: enough to tell that it changed since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LocalSig {
    dir: bool,
    size: u64,
    mtime_ns: i128,
}

/// An entry of the store as a round saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemoteEntry {
    dir: bool,
    /// Changes with every write or move of the entry: id, revision, size and blob.
    version: String,
    /// A conflict copy (read-only; the store drops it).
    copy: bool,
    mode: u32,
    size: u64,
}

/// What the last round left a path as on each side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Base {
    local: Option<LocalSig>,
    remote: Option<String>,
}

/// `<dir>/.lattice-sync.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    store: String,
    entries: BTreeMap<String, Base>,
}

/// What one round did.
#[derive(Debug, Default)]
struct Round {
    /// Written to the store (files and directories), removed from it, written to the folder,
    /// removed from the folder, conflicts kept as a second file.
    up: Vec<String>,
    removed_up: Vec<String>,
    down: Vec<String>,
    removed_down: Vec<String>,
    conflicts: Vec<String>,
    /// Paths not synced because a symbolic link in the folder is in their way.
    skipped: Vec<String>,
    /// `path: why` for each path that failed (the round went on with the others).
    failed: Vec<String>,
}

impl Round {
    fn fail(&mut self, path: &str, error: &anyhow::Error) {
        self.failed.push(format!("{path}: {error:#}"));
    }

    fn is_empty(&self) -> bool {
        self.up.is_empty()
            && self.removed_up.is_empty()
            && self.down.is_empty()
            && self.removed_down.is_empty()
            && self.conflicts.is_empty()
    }

    fn json(&self) -> Value {
        json!({
            "to_store": self.up,
            "removed_from_store": self.removed_up,
            "to_folder": self.down,
            "removed_from_folder": self.removed_down,
            "conflicts": self.conflicts,
            "skipped": self.skipped,
            "failed": self.failed,
        })
    }

    fn text(&self) -> String {
        let mut lines = Vec::new();
        let mut add = |mark: &str, paths: &[String]| {
            lines.extend(paths.iter().map(|p| format!("{mark} {p}")));
        };
        add("↑", &self.up);
        add("↑ removed", &self.removed_up);
        add("↓", &self.down);
        add("↓ removed", &self.removed_down);
        add("⚠ conflict, both kept:", &self.conflicts);
        add(
            "skipped (a symbolic link in the folder is in its way):",
            &self.skipped,
        );
        add("✗ failed (tried again next round):", &self.failed);
        lines.push(format!(
            "synced: {} to the store, {} removed there, {} to the folder, {} removed here, {} conflicts, {} failed",
            self.up.len(),
            self.removed_up.len(),
            self.down.len(),
            self.removed_down.len(),
            self.conflicts.len(),
            self.failed.len()
        ));
        lines.join("\n")
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt as _;
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

fn local_sig(meta: &std::fs::Metadata) -> LocalSig {
    LocalSig {
        dir: meta.is_dir(),
        size: if meta.is_dir() { 0 } else { meta.len() },
        mtime_ns: if meta.is_dir() { 0 } else { mtime_ns(meta) },
    }
}

/// Every file and directory under `root` by `/`-separated relative path (links and the sync's
/// own files left out).
fn walk_local(root: &Path) -> anyhow::Result<BTreeMap<String, LocalSig>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue; // not UTF-8: the store's names are text
            };
            if name.starts_with(OWN_PREFIX) {
                remove_if_stale(&entry.path(), name);
                continue;
            }
            let meta = std::fs::symlink_metadata(entry.path())
                .with_context(|| format!("reading {}", entry.path().display()))?;
            if !meta.is_dir() && !meta.is_file() {
                continue;
            }
            let path = format!("{prefix}{name}");
            if meta.is_dir() {
                pending.push((entry.path(), format!("{path}/")));
            }
            found.insert(path, local_sig(&meta));
        }
    }
    Ok(found)
}

/// Every file and directory of the store by path (links left out).
async fn walk_store(c: &mut Client, store: &str) -> anyhow::Result<BTreeMap<String, RemoteEntry>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![String::new()];
    while let Some(dir) = pending.pop() {
        let listed = call(c, store, "readdir", json!({ "path": dir })).await?;
        for item in listed["items"].as_array().into_iter().flatten() {
            let (Some(name), Some(kind)) = (item["name"].as_str(), item["kind"].as_str()) else {
                continue;
            };
            // A directory removed while a peer added something into it is still listed
            // (`removed`), with what it holds: it is synced like any other.
            if kind == "symlink" || name.starts_with(OWN_PREFIX) {
                continue;
            }
            let path = if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            };
            if kind == "dir" {
                pending.push(path.clone());
            }
            let version = entry_version(item);
            found.insert(
                path,
                RemoteEntry {
                    dir: kind == "dir",
                    version,
                    copy: item["conflict_copy"] == true,
                    mode: u32::try_from(item["mode"].as_u64().unwrap_or(0o644)).unwrap_or(0o644),
                    size: item["size"].as_u64().unwrap_or(0),
                },
            );
        }
    }
    Ok(found)
}

/// The store's version of `path` now (after this round wrote it).
async fn remote_version(c: &mut Client, store: &str, path: &str) -> anyhow::Result<String> {
    let s = call(c, store, "stat", json!({ "path": path })).await?;
    Ok(entry_version(&s))
}

/// What tells a store entry's versions apart (`rev` changes with every write; the modified
/// time stands in for it with a store type that does not give one).
fn entry_version(item: &Value) -> String {
    format!(
        "{}:{}:{}:{}:{}",
        item["id"], item["rev"], item["size"], item["mtime_ms"], item["blob"]
    )
}

fn local_meta(path: &Path) -> anyhow::Result<LocalSig> {
    Ok(local_sig(
        &std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?,
    ))
}

/// Makes `path`'s directory and its parents in the store, where missing; `known` holds
/// directories known to exist (and gets the ones found or made).
async fn mkdir_parents(
    c: &mut Client,
    store: &str,
    path: &str,
    known: &mut BTreeSet<String>,
) -> anyhow::Result<()> {
    let parts: Vec<&str> = path.split('/').collect();
    for n in 1..parts.len() {
        let dir = parts[..n].join("/");
        if known.contains(&dir) {
            continue;
        }
        let exists = call(c, store, "stat", json!({ "path": dir }))
            .await
            .is_ok_and(|s| s["kind"] == "dir");
        if !exists {
            call(c, store, "mkdir", json!({ "path": dir })).await?;
        }
        known.insert(dir);
    }
    Ok(())
}

/// Files copied at once: the node commits concurrent writes together, so a folder of small
/// files goes up several times faster than one by one.
const TRANSFERS_IN_FLIGHT: usize = 8;

/// A file to copy one way.
enum Transfer {
    /// From the folder (`at`, as `sig` describes it) to the store's `path`.
    Up {
        path: String,
        at: PathBuf,
        sig: LocalSig,
    },
    /// From the store's `path` (as `entry`) to the folder's `at`.
    Down {
        path: String,
        at: PathBuf,
        entry: RemoteEntry,
    },
}

impl Transfer {
    fn path(&self) -> &str {
        match self {
            Transfer::Up { path, .. } | Transfer::Down { path, .. } => path,
        }
    }

    /// Copies the file; returns what both sides now hold, and whether it went up.
    async fn run(self, mut c: Client, store: String) -> anyhow::Result<(Base, bool)> {
        // Concurrent copies show no progress meters (they would interleave).
        let quiet = Output::new(true);
        match self {
            Transfer::Up { path, at, sig } => {
                put(&mut c, &store, &at, &path, file_mode(&at), &quiet).await?;
                let version = remote_version(&mut c, &store, &path).await?;
                let base = Base {
                    local: Some(sig),
                    remote: Some(version),
                };
                Ok((base, true))
            }
            Transfer::Down { path, at, entry } => {
                let sig = pull(&mut c, &store, &path, &at, &entry, &quiet).await?;
                let base = Base {
                    local: Some(sig),
                    remote: Some(entry.version),
                };
                Ok((base, false))
            }
        }
    }
}

/// Runs `transfers`, [`TRANSFERS_IN_FLIGHT`] at a time, recording each one done in `state`
/// and `done`, and each one that failed in `done.failed` (the others go on).
async fn transfer(
    c: &Client,
    store: &str,
    transfers: Vec<Transfer>,
    state: &mut State,
    done: &mut Round,
) {
    let mut pending = transfers.into_iter();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < TRANSFERS_IN_FLIGHT {
            let Some(next) = pending.next() else { break };
            let (c, store) = (c.clone(), store.to_string());
            running.spawn(async move {
                let path = next.path().to_string();
                (path, next.run(c, store).await)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        match joined {
            Ok((path, Ok((base, up)))) => {
                state.entries.insert(path.clone(), base);
                if up {
                    done.up.push(path);
                } else {
                    done.down.push(path);
                }
            }
            Ok((path, Err(e))) => done.fail(&path, &e),
            Err(e) => done.failed.push(format!("a file copy stopped: {e}")),
        }
    }
}

fn file_mode(sig_path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(sig_path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

/// True when `path` is `dir` or inside it.
fn is_under(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// True when `path`, or a folder on the way to it, is a symbolic link in the folder at `root`:
/// the sync neither writes nor removes through one (it could lead outside the folder).
fn through_link(root: &Path, path: &str) -> bool {
    let mut at = root.to_path_buf();
    for part in path.split('/') {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// One pass over both trees: what it has seen, what it has left to do after the pass, what
/// it did.
struct Pass<'a> {
    c: &'a mut Client,
    store: &'a str,
    root: &'a Path,
    state: &'a mut State,
    out: &'a Output,
    /// The folder as the pass found it.
    local: &'a BTreeMap<String, LocalSig>,
    done: Round,
    /// Files to copy after the pass, several at once.
    transfers: Vec<Transfer>,
    /// The store's directories as far as this pass knows.
    dirs: BTreeSet<String>,
    /// Directories to remove once what was in them is gone (true: from the store).
    dirs_to_remove: Vec<(String, bool)>,
    /// Folder directories moved aside: what was in them goes up under the new name next round.
    aside: Vec<String>,
    /// Store directories the folder replaced with a file: removed after the pass (once what
    /// was in them is), then the file goes up.
    replacing: Vec<(String, LocalSig)>,
}

/// One pass over both trees; returns what it did, and the paths that failed (the others go
/// on). `state` is updated as it goes.
async fn round(
    c: &mut Client,
    store: &str,
    root: &Path,
    state: &mut State,
    out: &Output,
) -> anyhow::Result<Round> {
    let local = walk_local(root)?;
    let remote = walk_store(c, store).await?;
    let paths: BTreeSet<String> = local
        .keys()
        .chain(remote.keys())
        .chain(state.entries.keys())
        .cloned()
        .collect();
    let dirs = remote
        .iter()
        .filter(|(_, r)| r.dir)
        .map(|(p, _)| p.clone())
        .collect();
    let mut pass = Pass {
        c,
        store,
        root,
        state,
        out,
        local: &local,
        done: Round::default(),
        transfers: Vec::new(),
        dirs,
        dirs_to_remove: Vec::new(),
        aside: Vec::new(),
        replacing: Vec::new(),
    };
    // Parents sort before their children ("a" < "a/b"), so directories are made first.
    for path in &paths {
        if let Err(e) = pass
            .path(path, local.get(path).cloned(), remote.get(path))
            .await
        {
            pass.done.fail(path, &e);
        }
    }
    pass.finish().await;
    Ok(pass.done)
}

impl Pass<'_> {
    /// Brings one path in step, or leaves work for [`Pass::finish`].
    async fn path(
        &mut self,
        path: &str,
        l: Option<LocalSig>,
        r: Option<&RemoteEntry>,
    ) -> anyhow::Result<()> {
        if self.aside.iter().any(|d| is_under(path, d)) {
            self.state.entries.remove(path);
            return Ok(());
        }
        let base = self.state.entries.get(path).cloned().unwrap_or_default();
        let local_changed = l != base.local;
        let remote_changed = r.map(|r| &r.version) != base.remote.as_ref();
        if !local_changed && !remote_changed {
            return Ok(());
        }
        if through_link(self.root, path) {
            self.done.skipped.push(path.to_string());
            return Ok(());
        }
        let (c, store) = (&mut *self.c, self.store);
        let at = self.root.join(path);
        match (local_changed, remote_changed) {
            (false, false) => {}
            // Only the folder changed, or the store removed what the folder changed: up.
            (true, false) | (true, true) if l.is_some() && (r.is_none() || !remote_changed) => {
                let Some(l) = l else { return Ok(()) };
                if let Some(r) = r.filter(|r| r.copy) {
                    // A conflict copy is read-only: the folder's edit goes to a file of its
                    // own, and the copy comes back as the store has it.
                    let kept = self.conflict_up(path, l.dir).await?;
                    let sig = pull(self.c, store, path, &at, r, self.out).await?;
                    self.record(path, sig, r.version.clone());
                    self.done.conflicts.push(kept);
                    return Ok(());
                }
                if r.is_some_and(|r| r.dir && !l.dir) {
                    // A directory became a file: the directory goes once it is empty.
                    self.replacing.push((path.to_string(), l));
                    return Ok(());
                }
                if r.is_some_and(|r| !r.dir && l.dir) {
                    remove_remote(c, store, path, false).await?;
                }
                if l.dir {
                    return self.dir_up(path, l).await;
                }
                mkdir_parents(c, store, path, &mut self.dirs).await?;
                self.transfers.push(Transfer::Up {
                    path: path.to_string(),
                    at,
                    sig: l,
                });
            }
            // Removed from the folder, unchanged in the store: remove it there.
            (true, false) => {
                let Some(r) = r else {
                    self.state.entries.remove(path);
                    return Ok(());
                };
                if r.copy {
                    // Not the folder's to drop: keep it gone here until the store changes it.
                    self.state.entries.insert(
                        path.to_string(),
                        Base {
                            local: None,
                            remote: Some(r.version.clone()),
                        },
                    );
                } else if r.dir {
                    self.dirs_to_remove.push((path.to_string(), true));
                } else {
                    remove_remote(c, store, path, false).await?;
                    self.state.entries.remove(path);
                    self.done.removed_up.push(path.to_string());
                }
            }
            // Only the store changed, or the folder removed what the store changed: down.
            (false, true) | (true, true) if r.is_some() && (l.is_none() || !local_changed) => {
                let Some(r) = r else { return Ok(()) };
                if self.replacing.iter().any(|(d, _)| is_under(path, d)) {
                    // The folder has a file where this goes: the next round, once this
                    // pass has settled which of the two stays.
                    return Ok(());
                }
                if let Some(l) = l.filter(|l| l.dir != r.dir) {
                    if l.dir && !self.subtree_unchanged(path) {
                        // A directory the store replaced with a file, with changes of the
                        // folder's inside: moved aside, it goes up next round.
                        let kept = self.conflict_up(path, true).await?;
                        self.done.conflicts.push(kept);
                    } else {
                        remove_local(&at)?;
                    }
                }
                if !r.dir {
                    self.transfers.push(Transfer::Down {
                        path: path.to_string(),
                        at,
                        entry: r.clone(),
                    });
                    return Ok(());
                }
                let sig = pull(self.c, store, path, &at, r, self.out).await?;
                self.record(path, sig, r.version.clone());
                self.done.down.push(path.to_string());
            }
            // Removed from the store, unchanged in the folder: remove it here.
            (false, true) => match l {
                Some(l) if l.dir => self.dirs_to_remove.push((path.to_string(), false)),
                Some(_) => {
                    remove_local(&at)?;
                    self.state.entries.remove(path);
                    self.done.removed_down.push(path.to_string());
                }
                None => {
                    self.state.entries.remove(path);
                }
            },
            // Changed on both sides, both still there.
            (true, true) => {
                let (Some(l), Some(r)) = (l, r) else {
                    // Removed on both.
                    self.state.entries.remove(path);
                    return Ok(());
                };
                if l.dir && r.dir {
                    self.record(path, l, r.version.clone());
                    return Ok(());
                }
                if !l.dir
                    && !r.dir
                    && l.size == r.size
                    && same_content(c, store, path, &at, self.out).await?
                {
                    let sig = local_meta(&at)?;
                    self.record(path, sig, r.version.clone());
                    return Ok(());
                }
                // Two different edits: the folder's goes beside, the store's takes the name.
                let kept = self.conflict_up(path, l.dir).await?;
                let sig = pull(self.c, store, path, &at, r, self.out).await?;
                self.record(path, sig, r.version.clone());
                self.done.down.push(path.to_string());
                self.done.conflicts.push(kept);
            }
        }
        Ok(())
    }

    /// Records that the folder holds `path` as `local` describes and the store as `remote`
    /// (its version).
    fn record(&mut self, path: &str, local: LocalSig, remote: String) {
        self.state.entries.insert(
            path.to_string(),
            Base {
                local: Some(local),
                remote: Some(remote),
            },
        );
    }

    /// Makes the folder's directory `path` in the store (and its parents, where missing) and
    /// records it.
    async fn dir_up(&mut self, path: &str, local: LocalSig) -> anyhow::Result<()> {
        let (c, store) = (&mut *self.c, self.store);
        mkdir_parents(c, store, path, &mut self.dirs).await?;
        if !self.dirs.contains(path) {
            call(c, store, "mkdir", json!({ "path": path })).await?;
            self.dirs.insert(path.to_string());
        }
        let version = remote_version(c, store, path).await?;
        self.record(path, local, version);
        self.done.up.push(path.to_string());
        Ok(())
    }

    /// True when nothing inside the folder's directory `dir` changed since the last round.
    fn subtree_unchanged(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        let inside = self
            .local
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix));
        for (path, sig) in inside {
            let base = self.state.entries.get(path).and_then(|b| b.local.as_ref());
            if base != Some(sig) {
                return false;
            }
        }
        true
    }

    /// Moves the folder's `path` aside (see [`conflict_up`]); a directory moved aside is not
    /// looked into again this pass.
    async fn conflict_up(&mut self, path: &str, dir: bool) -> anyhow::Result<String> {
        let kept = conflict_up(
            self.c,
            self.store,
            self.root,
            path,
            &mut self.done,
            self.state,
            self.out,
        )
        .await?;
        if dir {
            self.aside.push(path.to_string());
        }
        Ok(kept)
    }

    /// The work left after the pass: the copies, the directories to remove (deepest first),
    /// then the store's directories the folder replaced with a file.
    async fn finish(&mut self) {
        let transfers = std::mem::take(&mut self.transfers);
        transfer(self.c, self.store, transfers, self.state, &mut self.done).await;
        self.done.up.sort();
        self.done.down.sort();
        let mut dirs_to_remove = std::mem::take(&mut self.dirs_to_remove);
        dirs_to_remove.sort();
        for (path, in_store) in dirs_to_remove.into_iter().rev() {
            if let Err(e) = self.remove_dir(&path, in_store).await {
                self.done.fail(&path, &e);
            }
        }
        let mut ups = Vec::new();
        for (path, sig) in std::mem::take(&mut self.replacing) {
            match self.replace_dir(&path, sig).await {
                Ok(Some(up)) => ups.push(up),
                Ok(None) => {}
                Err(e) => self.done.fail(&path, &e),
            }
        }
        transfer(self.c, self.store, ups, self.state, &mut self.done).await;
    }

    /// Removes a directory whose entries were removed, from the store or from the folder —
    /// unless something was added into it meanwhile.
    async fn remove_dir(&mut self, path: &str, in_store: bool) -> anyhow::Result<()> {
        let at = self.root.join(path);
        if in_store {
            return match remove_remote(self.c, self.store, path, true).await {
                Ok(()) => {
                    self.state.entries.remove(path);
                    self.done.removed_up.push(path.to_string());
                    Ok(())
                }
                // Something was added into it meanwhile on a peer: it stays (next round
                // brings the new entries down, and the directory with them).
                Err(e) if not_empty(&e) => {
                    self.state.entries.remove(path);
                    Ok(())
                }
                Err(e) => Err(e),
            };
        }
        match std::fs::remove_dir(&at) {
            Ok(()) => {
                self.state.entries.remove(path);
                self.done.removed_down.push(path.to_string());
            }
            // Something new in it here: the directory goes back to the store with it.
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                self.dir_up(path, local_meta(&at)?).await?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.state.entries.remove(path);
            }
            Err(e) => return Err(e).with_context(|| format!("removing {}", at.display())),
        }
        Ok(())
    }

    /// The folder replaced the store's directory `path` with a file: the directory goes if
    /// it is empty now, and the file is returned to be copied up. If a peer put something
    /// into it meanwhile, the directory stays and the file goes beside it as a conflict.
    async fn replace_dir(&mut self, path: &str, sig: LocalSig) -> anyhow::Result<Option<Transfer>> {
        let at = self.root.join(path);
        match remove_remote(self.c, self.store, path, true).await {
            Ok(()) => {
                self.dirs.remove(path);
                Ok(Some(Transfer::Up {
                    path: path.to_string(),
                    at,
                    sig,
                }))
            }
            Err(e) if not_empty(&e) => {
                let kept = self.conflict_up(path, false).await?;
                std::fs::create_dir_all(&at).with_context(|| format!("making {}", at.display()))?;
                let version = remote_version(self.c, self.store, path).await?;
                self.record(path, local_meta(&at)?, version);
                self.done.conflicts.push(kept);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Moves the folder's version of `path` to `NAME.conflict-local-<ms>` and writes it to the
/// store under that name; returns the new name.
async fn conflict_up(
    c: &mut Client,
    store: &str,
    root: &Path,
    path: &str,
    done: &mut Round,
    state: &mut State,
    out: &Output,
) -> anyhow::Result<String> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let kept = format!("{path}.conflict-local-{ms}");
    let (from, to) = (root.join(path), root.join(&kept));
    std::fs::rename(&from, &to)
        .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
    let sig = local_meta(&to)?;
    if !sig.dir {
        mkdir_parents(c, store, &kept, &mut BTreeSet::new()).await?;
        put(c, store, &to, &kept, file_mode(&to), out).await?;
        let version = remote_version(c, store, &kept).await?;
        state.entries.insert(
            kept.clone(),
            Base {
                local: Some(sig),
                remote: Some(version),
            },
        );
        done.up.push(kept.clone());
    }
    // A directory moved aside goes up with its contents in the next round, as new entries.
    Ok(kept)
}

/// Writes the store's `path` (file or directory) into the folder at `at`.
async fn pull(
    c: &mut Client,
    store: &str,
    path: &str,
    at: &Path,
    r: &RemoteEntry,
    out: &Output,
) -> anyhow::Result<LocalSig> {
    if let Some(parent) = at.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("making {}", parent.display()))?;
    }
    if r.dir {
        std::fs::create_dir_all(at).with_context(|| format!("making {}", at.display()))?;
    } else {
        get(c, store, path, Some(at), out).await?;
        use std::os::unix::fs::PermissionsExt as _;
        // Copies are read-only in the store: show them so here too. A peer's special bits
        // (set-user-id and the like) are not taken.
        let mode = if r.copy {
            r.mode & 0o555
        } else {
            r.mode & 0o777
        };
        std::fs::set_permissions(at, std::fs::Permissions::from_mode(mode | 0o400))
            .with_context(|| format!("setting the mode of {}", at.display()))?;
    }
    local_meta(at)
}

/// True when the store's file at `path` holds the same bytes as `at`.
async fn same_content(
    c: &mut Client,
    store: &str,
    path: &str,
    at: &Path,
    out: &Output,
) -> anyhow::Result<bool> {
    let dir = at.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".lattice-compare-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    get(c, store, path, Some(tmp.path()), out).await?;
    let hash = |p: &Path| -> anyhow::Result<blake3::Hash> {
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_reader(
                std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("reading {}", p.display()))?;
        Ok(hasher.finalize())
    };
    Ok(hash(tmp.path())? == hash(at)?)
}

/// True when the store refused to remove a directory because something is in it.
fn not_empty(error: &anyhow::Error) -> bool {
    error.to_string().contains("ENOTEMPTY")
}

/// Removes a file or an (empty) directory from the store.
async fn remove_remote(c: &mut Client, store: &str, path: &str, dir: bool) -> anyhow::Result<()> {
    let method = if dir { "rmdir" } else { "unlink" };
    call(c, store, method, json!({ "path": path })).await?;
    Ok(())
}

/// Removes a file, or a directory with what is in it, from the folder.
fn remove_local(at: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(at);
    let result = match meta {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(at),
        Ok(_) => std::fs::remove_file(at),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.with_context(|| format!("removing {}", at.display()))
}

/// Takes the folder's lock (released when the returned file is dropped, or the process ends).
fn lock_folder(root: &Path) -> anyhow::Result<std::fs::File> {
    let path = root.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(CliError::new(
            "invalid_argument",
            format!(
                "another `lattice fs sync` is running on {}; wait for it or stop it",
                root.display()
            ),
        )
        .into()),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

fn load_state(path: &Path, store: &str) -> anyhow::Result<State> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(State {
                store: store.to_string(),
                entries: BTreeMap::new(),
            });
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let state: State = serde_json::from_slice(&bytes).map_err(|e| {
        CliError::new(
            "invalid_argument",
            format!(
                "{} is damaged ({e}); remove it to sync from scratch (both sides' files are kept)",
                path.display()
            ),
        )
    })?;
    if state.store != store {
        return Err(CliError::new(
            "invalid_argument",
            format!(
                "{} is synced with store {}, not {store}; sync another folder",
                path.display(),
                state.store
            ),
        )
        .into());
    }
    Ok(state)
}

/// Writes `state` to `path` (through a temporary file) unless it is what `saved` holds, the
/// bytes written last; a `--watch` round that changed nothing writes nothing.
fn save_state(path: &Path, state: &State, saved: &mut Vec<u8>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let bytes = serde_json::to_vec(state).context("encoding the sync state")?;
    if bytes == *saved {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".lattice-sync-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(&bytes).context("writing the sync state")?;
    tmp.as_file().sync_all().context("writing the sync state")?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    *saved = bytes;
    Ok(())
}

/// Runs `lattice fs sync`: one round, or with `watch` a round every `interval` until Ctrl-C.
pub(crate) async fn run(
    c: &mut Client,
    store: &str,
    dir: &Path,
    watch: bool,
    interval: Duration,
    out: &Output,
) -> anyhow::Result<()> {
    ensure_fs(c, store).await?;
    std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    let root: PathBuf = dir
        .canonicalize()
        .with_context(|| format!("the folder {}", dir.display()))?;
    let _lock = lock_folder(&root)?;
    let state_path = root.join(STATE_FILE);
    let mut state = load_state(&state_path, store)?;
    let mut saved = Vec::new();
    let mut last_failed = Vec::new();
    // Listening before the first round: a Ctrl-C that comes during a round ends the watch
    // once that round is saved.
    let mut interrupt = if watch {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("listening for Ctrl-C")?,
        )
    } else {
        None
    };
    loop {
        let result = round(c, store, &root, &mut state, out).await;
        // What was done before a failure is recorded, so the next round does not redo it.
        save_state(&state_path, &state, &mut saved)?;
        let done = match result {
            Ok(done) => done,
            Err(e) if !watch => return Err(e),
            // A watcher outlives a failed round (the daemon restarting, a file in use): it
            // says why and tries again next round.
            Err(e) => {
                out.error(&e);
                Round::default()
            }
        };
        // A watcher reports a round that did something, or whose failures are not the last
        // round's (a failure that stays is said once).
        if !watch || !done.is_empty() || done.failed != last_failed {
            let mut report = done.json();
            report["store"] = json!(store);
            report["dir"] = json!(root);
            out.record(&done.text(), report);
        }
        let Some(interrupt) = interrupt.as_mut() else {
            if !done.failed.is_empty() {
                anyhow::bail!(
                    "{} of the paths were not synced (listed above); the rest were",
                    done.failed.len()
                );
            }
            return Ok(());
        };
        last_failed = done.failed;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = interrupt.recv() => return Ok(()),
        }
    }
}
