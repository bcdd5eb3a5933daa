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

/// Names with this prefix are the sync's own files (state, temporary downloads): never synced.
const OWN_PREFIX: &str = ".lattice-";

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
    /// Changes with every write or move of the entry: id, size, modified time and blob.
    version: String,
    /// A conflict copy (read-only; the store drops it).
    copy: bool,
    mode: u32,
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
}

impl Round {
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
        lines.push(format!(
            "synced: {} to the store, {} removed there, {} to the folder, {} removed here, {} conflicts",
            self.up.len(),
            self.removed_up.len(),
            self.down.len(),
            self.removed_down.len(),
            self.conflicts.len()
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
            if item["removed"] == true || kind == "symlink" {
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
            let version = format!(
                "{}:{}:{}:{}",
                item["id"], item["size"], item["mtime_ms"], item["blob"]
            );
            found.insert(
                path,
                RemoteEntry {
                    dir: kind == "dir",
                    version,
                    copy: item["conflict_copy"] == true,
                    mode: u32::try_from(item["mode"].as_u64().unwrap_or(0o644)).unwrap_or(0o644),
                },
            );
        }
    }
    Ok(found)
}

/// The store's version of `path` now (after this round wrote it).
async fn remote_version(c: &mut Client, store: &str, path: &str) -> anyhow::Result<String> {
    let s = call(c, store, "stat", json!({ "path": path })).await?;
    Ok(format!(
        "{}:{}:{}:{}",
        s["id"], s["size"], s["mtime_ms"], s["blob"]
    ))
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
    /// Copies the file; returns its path, what both sides now hold, and whether it went up.
    async fn run(self, mut c: Client, store: String) -> anyhow::Result<(String, Base, bool)> {
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
                Ok((path, base, true))
            }
            Transfer::Down { path, at, entry } => {
                let sig = pull(&mut c, &store, &path, &at, &entry, &quiet).await?;
                let base = Base {
                    local: Some(sig),
                    remote: Some(entry.version),
                };
                Ok((path, base, false))
            }
        }
    }
}

/// Runs `transfers`, [`TRANSFERS_IN_FLIGHT`] at a time, recording each one done in `state`
/// and `done`. After a failure no more start; the first failure is returned once the ones
/// running have ended (and been recorded).
async fn transfer(
    c: &Client,
    store: &str,
    transfers: Vec<Transfer>,
    state: &mut State,
    done: &mut Round,
) -> anyhow::Result<()> {
    let mut pending = transfers.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut failure = None;
    loop {
        while failure.is_none() && running.len() < TRANSFERS_IN_FLIGHT {
            let Some(next) = pending.next() else { break };
            running.spawn(next.run(c.clone(), store.to_string()));
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        match joined {
            Ok(Ok((path, base, up))) => {
                state.entries.insert(path.clone(), base);
                if up {
                    done.up.push(path);
                } else {
                    done.down.push(path);
                }
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(anyhow::anyhow!("a file copy stopped: {e}"));
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

fn file_mode(sig_path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(sig_path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// One pass over both trees; returns what it did. `state` is updated as it goes.
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
    let mut done = Round::default();
    // Directories to remove go last, deepest first, once what was in them is gone.
    let mut dirs_to_remove: Vec<(String, bool)> = Vec::new();
    // Files to copy, after the pass, several at once.
    let mut transfers = Vec::new();
    // The store's directories as far as this round knows.
    let mut dirs: BTreeSet<String> = remote
        .iter()
        .filter(|(_, r)| r.dir)
        .map(|(p, _)| p.clone())
        .collect();
    // Parents sort before their children ("a" < "a/b"), so directories are made first.
    for path in &paths {
        let l = local.get(path).cloned();
        let r = remote.get(path);
        let base = state.entries.get(path).cloned().unwrap_or_default();
        let local_changed = l != base.local;
        let remote_changed = r.map(|r| &r.version) != base.remote.as_ref();
        let at = root.join(path);
        match (local_changed, remote_changed) {
            (false, false) => {}
            // Only the folder changed, or the store removed what the folder changed: up.
            (true, false) | (true, true) if l.is_some() && (r.is_none() || !remote_changed) => {
                let Some(l) = l.clone() else { continue };
                if let Some(r) = r.filter(|r| r.copy) {
                    // A conflict copy is read-only: the folder's edit goes to a file of its
                    // own, and the copy comes back as the store has it.
                    let kept = conflict_up(c, store, root, path, &mut done, state, out).await?;
                    let sig = pull(c, store, path, &at, r, out).await?;
                    state.entries.insert(
                        path.clone(),
                        Base {
                            local: Some(sig),
                            remote: Some(r.version.clone()),
                        },
                    );
                    done.conflicts.push(kept);
                    continue;
                }
                if r.is_some_and(|r| r.dir != l.dir) {
                    // A file became a directory or the other way round: replace the entry.
                    remove_remote(c, store, path, r.is_some_and(|r| r.dir)).await?;
                }
                mkdir_parents(c, store, path, &mut dirs).await?;
                if !l.dir {
                    transfers.push(Transfer::Up {
                        path: path.clone(),
                        at,
                        sig: l,
                    });
                    continue;
                }
                if !r.is_some_and(|r| r.dir) {
                    call(c, store, "mkdir", json!({ "path": path })).await?;
                    dirs.insert(path.clone());
                }
                let version = remote_version(c, store, path).await?;
                state.entries.insert(
                    path.clone(),
                    Base {
                        local: Some(l),
                        remote: Some(version),
                    },
                );
                done.up.push(path.clone());
            }
            // Removed from the folder, unchanged in the store: remove it there.
            (true, false) => {
                let Some(r) = r else {
                    state.entries.remove(path);
                    continue;
                };
                if r.copy {
                    // Not the folder's to drop: keep it gone here until the store changes it.
                    state.entries.insert(
                        path.clone(),
                        Base {
                            local: None,
                            remote: Some(r.version.clone()),
                        },
                    );
                    continue;
                }
                if r.dir {
                    dirs_to_remove.push((path.clone(), true));
                } else {
                    remove_remote(c, store, path, false).await?;
                    state.entries.remove(path);
                    done.removed_up.push(path.clone());
                }
            }
            // Only the store changed, or the folder removed what the store changed: down.
            (false, true) | (true, true) if r.is_some() && (l.is_none() || !local_changed) => {
                let Some(r) = r else { continue };
                if l.as_ref().is_some_and(|l| l.dir != r.dir) {
                    remove_local(&at)?;
                }
                if !r.dir {
                    transfers.push(Transfer::Down {
                        path: path.clone(),
                        at,
                        entry: r.clone(),
                    });
                    continue;
                }
                let sig = pull(c, store, path, &at, r, out).await?;
                state.entries.insert(
                    path.clone(),
                    Base {
                        local: Some(sig),
                        remote: Some(r.version.clone()),
                    },
                );
                done.down.push(path.clone());
            }
            // Removed from the store, unchanged in the folder: remove it here.
            (false, true) => match l {
                Some(l) if l.dir => dirs_to_remove.push((path.clone(), false)),
                Some(_) => {
                    remove_local(&at)?;
                    state.entries.remove(path);
                    done.removed_down.push(path.clone());
                }
                None => {
                    state.entries.remove(path);
                }
            },
            // Changed on both sides, both still there.
            (true, true) => {
                let (Some(l), Some(r)) = (l, r) else {
                    // Removed on both.
                    state.entries.remove(path);
                    continue;
                };
                if l.dir && r.dir {
                    state.entries.insert(
                        path.clone(),
                        Base {
                            local: Some(l),
                            remote: Some(r.version.clone()),
                        },
                    );
                    continue;
                }
                if !l.dir && !r.dir && same_content(c, store, path, &at, out).await? {
                    state.entries.insert(
                        path.clone(),
                        Base {
                            local: Some(local_meta(&at)?),
                            remote: Some(r.version.clone()),
                        },
                    );
                    continue;
                }
                // Two different edits: the folder's goes beside, the store's takes the name.
                let kept = conflict_up(c, store, root, path, &mut done, state, out).await?;
                let sig = pull(c, store, path, &at, r, out).await?;
                state.entries.insert(
                    path.clone(),
                    Base {
                        local: Some(sig),
                        remote: Some(r.version.clone()),
                    },
                );
                done.down.push(path.clone());
                done.conflicts.push(kept);
            }
        }
    }
    transfer(c, store, transfers, state, &mut done).await?;
    done.up.sort();
    done.down.sort();
    dirs_to_remove.sort();
    for (path, in_store) in dirs_to_remove.into_iter().rev() {
        let at = root.join(&path);
        if in_store {
            match remove_remote(c, store, &path, true).await {
                Ok(()) => {
                    state.entries.remove(&path);
                    done.removed_up.push(path);
                }
                // Something was added into it meanwhile on a peer: it stays (next round
                // brings the new entries down, and the directory with them).
                Err(e) if e.to_string().contains("ENOTEMPTY") => {
                    state.entries.remove(&path);
                }
                Err(e) => return Err(e),
            }
        } else {
            match std::fs::remove_dir(&at) {
                Ok(()) => {
                    state.entries.remove(&path);
                    done.removed_down.push(path);
                }
                // Something new in it here: the directory goes back to the store with it.
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                    mkdir_parents(c, store, &path, &mut dirs).await?;
                    call(c, store, "mkdir", json!({ "path": path })).await?;
                    let version = remote_version(c, store, &path).await?;
                    state.entries.insert(
                        path.clone(),
                        Base {
                            local: Some(local_meta(&at)?),
                            remote: Some(version),
                        },
                    );
                    done.up.push(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    state.entries.remove(&path);
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("removing {}", at.display()));
                }
            }
        }
    }
    Ok(done)
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
        // Copies are read-only in the store: show them so here too.
        let mode = if r.copy { r.mode & 0o7555 } else { r.mode };
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
    let state_path = root.join(STATE_FILE);
    let mut state = load_state(&state_path, store)?;
    let mut saved = Vec::new();
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
        if !watch || !done.is_empty() {
            let mut report = done.json();
            report["store"] = json!(store);
            report["dir"] = json!(root);
            out.record(&done.text(), report);
        }
        let Some(interrupt) = interrupt.as_mut() else {
            return Ok(());
        };
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = interrupt.recv() => return Ok(()),
        }
    }
}
