use std::collections::{BTreeSet, HashMap};

use lattice_sdk::{Args, Hlc, MemoryHost, Prepared, StoreError, StoreType};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::FsStore;
use crate::model::{Id, ROOT};
use crate::tree::{self, LOC, Target};

/// One replica: its state, the intentions it applied, its author chain.
struct Replica {
    host: MemoryHost,
    applied: BTreeSet<Vec<u8>>,
    author: u8,
    last: Option<Vec<u8>>,
}

/// An intention as the host would deliver it, with what must come before it.
#[derive(Clone)]
struct Written {
    op: lattice_sdk::Intention,
    before: Vec<Vec<u8>>,
}

struct World {
    replicas: Vec<Replica>,
    log: Vec<Written>,
    clock: u64,
    /// When set, every intention carries this wall time (a peer's clock ahead: the HLC's
    /// wall part stands still and its counter moves).
    frozen_wall: Option<u64>,
}

impl World {
    fn new(n: u8) -> World {
        World {
            replicas: (0..n)
                .map(|i| Replica {
                    host: MemoryHost::new(),
                    applied: BTreeSet::new(),
                    author: i + 1,
                    last: None,
                })
                .collect(),
            log: Vec::new(),
            clock: 0,
            frozen_wall: None,
        }
    }

    /// Runs a command on replica `r`: prepared there, applied there, kept for the others.
    fn call(&mut self, r: usize, method: &str, args: Value) -> Result<(), StoreError> {
        let replica = &mut self.replicas[r];
        let prepared: Prepared = FsStore::prepare(&replica.host, method, &Args::from_json(args))?;
        self.clock += 1;
        let mut hash = vec![0u8; 32];
        hash[..8].copy_from_slice(&self.clock.to_le_bytes());
        hash[8] = replica.author;
        let op = lattice_sdk::Intention {
            hash: hash.clone(),
            author: vec![replica.author; 32],
            hlc: Hlc {
                wall_ms: self.frozen_wall.unwrap_or(self.clock),
                counter: if self.frozen_wall.is_some() {
                    u32::try_from(self.clock).unwrap_or(u32::MAX)
                } else {
                    0
                },
            },
            deps: prepared.deps.clone(),
            ops: prepared.ops,
        };
        let mut before = prepared.deps;
        before.extend(replica.last.clone());
        FsStore::apply(&mut replica.host, &op)?;
        replica.applied.insert(hash.clone());
        replica.last = Some(hash);
        self.log.push(Written { op, before });
        Ok(())
    }

    /// Delivers everything to replica `r` in an order picked by `pick` among those whose
    /// causal past is there.
    fn deliver_all(
        &mut self,
        r: usize,
        mut pick: impl FnMut(usize) -> usize,
    ) -> Result<(), StoreError> {
        loop {
            let replica = &self.replicas[r];
            let ready: Vec<&Written> = self
                .log
                .iter()
                .filter(|w| !replica.applied.contains(&w.op.hash))
                .filter(|w| w.before.iter().all(|b| replica.applied.contains(b)))
                .collect();
            if ready.is_empty() {
                return Ok(());
            }
            let chosen = ready[pick(ready.len()) % ready.len()].op.clone();
            let replica = &mut self.replicas[r];
            FsStore::apply(&mut replica.host, &chosen)?;
            replica.applied.insert(chosen.hash);
        }
    }
}

fn query(host: &MemoryHost, method: &str, args: Value) -> Result<Value, StoreError> {
    FsStore::query(host, method, &Args::from_json(args))
}

fn names(host: &MemoryHost, path: &str) -> Result<Vec<String>, StoreError> {
    Ok(query(host, "readdir", json!({ "path": path }))?["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

fn read(host: &MemoryHost, path: &str) -> Result<Vec<u8>, StoreError> {
    crate::read_all(host, path)
}

/// Every path reachable from the root, with the entries they name.
fn walk(host: &MemoryHost) -> Result<Vec<(String, Target)>, StoreError> {
    let mut out = Vec::new();
    let mut todo = vec![(String::new(), ROOT)];
    while let Some((path, dir)) = todo.pop() {
        assert!(out.len() < 10_000, "the tree does not end");
        for item in tree::list(host, &dir)? {
            let child = format!("{path}/{}", String::from_utf8_lossy(&item.name));
            if let Target::Entry(id) = item.target
                && item.placed.loc.kind == crate::model::Kind::Dir
            {
                todo.push((child.clone(), id));
            }
            out.push((child, item.target));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[test]
fn files_directories_and_symlinks_round_trip() -> Result<(), StoreError> {
    let mut w = World::new(1);
    w.call(0, "mkdir", json!({"path": "docs"}))?;
    w.call(
        0,
        "write",
        json!({"path": "docs/a b ü.txt", "data": "hello"}),
    )?;
    w.call(
        0,
        "symlink",
        json!({"path": "link", "target": "docs/a b ü.txt"}),
    )?;
    let big: String = (0..crate::MAX_INLINE + 10)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    w.call(
        0,
        "write",
        json!({"path": "docs/big", "data": big, "mode": 0o600}),
    )?;
    let h = &w.replicas[0].host;
    assert_eq!(names(h, "/")?, vec!["docs", "link"]);
    assert_eq!(names(h, "docs")?, vec!["a b ü.txt", "big"]);
    assert_eq!(read(h, "/docs/a b ü.txt")?, b"hello");
    assert_eq!(read(h, "docs/big")?, big.as_bytes());
    let stat = query(h, "stat", json!({"path": "docs/big"}))?;
    assert_eq!(stat["size"], json!(big.len()));
    assert_eq!(stat["mode"], json!(0o600));
    assert!(stat["blob"].is_string(), "{stat}");
    assert_eq!(
        query(h, "readlink", json!({"path": "link"}))?["target"],
        json!("docs/a b ü.txt")
    );
    let part = query(
        h,
        "read",
        json!({"path": "docs/big", "offset": 2, "length": 3}),
    )?;
    assert_eq!(part["data"], json!("cde"));

    // Replace, rename over a file, remove.
    w.call(
        0,
        "write",
        json!({"path": "docs/a b ü.txt", "data": "again"}),
    )?;
    w.call(
        0,
        "rename",
        json!({"from": "docs/big", "to": "docs/a b ü.txt"}),
    )?;
    let h = &w.replicas[0].host;
    assert_eq!(names(h, "docs")?, vec!["a b ü.txt"]);
    assert_eq!(read(h, "docs/a b ü.txt")?, big.as_bytes());
    w.call(0, "unlink", json!({"path": "docs/a b ü.txt"}))?;
    w.call(0, "rmdir", json!({"path": "docs"}))?;
    assert_eq!(names(&w.replicas[0].host, "")?, vec!["link"]);
    Ok(())
}

#[test]
fn an_entrys_revision_changes_with_every_write_when_its_time_stands_still() -> Result<(), StoreError>
{
    let mut w = World::new(1);
    w.frozen_wall = Some(1_000);
    let mut seen = BTreeSet::new();
    let stat = |w: &World| query(&w.replicas[0].host, "stat", json!({"path": "f"}));
    w.call(0, "write", json!({"path": "f", "data": "one"}))?;
    let first = stat(&w)?;
    seen.insert(first["rev"].to_string());
    w.call(0, "write", json!({"path": "f", "data": "two"}))?;
    let second = stat(&w)?;
    // Same size and same modified time: only the revision tells the two writes apart.
    assert_eq!(first["size"], second["size"]);
    assert_eq!(first["mtime_ms"], second["mtime_ms"]);
    seen.insert(second["rev"].to_string());
    w.call(0, "chmod", json!({"path": "f", "mode": 0o600}))?;
    seen.insert(stat(&w)?["rev"].to_string());
    assert_eq!(seen.len(), 3, "{seen:?}");
    Ok(())
}

#[test]
fn bad_calls_say_what_is_wrong() -> Result<(), StoreError> {
    let mut w = World::new(1);
    w.call(0, "mkdir", json!({"path": "d"}))?;
    w.call(0, "write", json!({"path": "d/f", "data": "x"}))?;
    let code = |r: Result<(), StoreError>| match r {
        Err(StoreError::InvalidArgument(m)) => m.split(':').next().unwrap_or_default().to_string(),
        other => format!("{other:?}"),
    };
    assert_eq!(code(w.call(0, "mkdir", json!({"path": "d"}))), "EEXIST");
    assert_eq!(
        code(w.call(0, "write", json!({"path": "nope/f", "data": "x"}))),
        "ENOENT"
    );
    assert_eq!(
        code(w.call(0, "write", json!({"path": "d/f/g", "data": "x"}))),
        "ENOTDIR"
    );
    assert_eq!(
        code(w.call(0, "write", json!({"path": "d", "data": "x"}))),
        "EISDIR"
    );
    assert_eq!(code(w.call(0, "rmdir", json!({"path": "d"}))), "ENOTEMPTY");
    assert_eq!(code(w.call(0, "unlink", json!({"path": "d"}))), "EISDIR");
    assert_eq!(
        code(w.call(0, "rename", json!({"from": "d", "to": "d/sub"}))),
        "EINVAL"
    );
    let long = "x".repeat(256);
    assert_eq!(
        code(w.call(0, "write", json!({"path": long, "data": "x"}))),
        "EINVAL"
    );
    w.call(0, "write", json!({"path": "x".repeat(255), "data": "x"}))?;
    Ok(())
}

#[test]
fn concurrent_writes_keep_the_loser_as_a_conflict_copy() -> Result<(), StoreError> {
    let mut w = World::new(2);
    w.call(0, "write", json!({"path": "f", "data": "base"}))?;
    w.deliver_all(1, |_| 0)?;
    w.call(0, "write", json!({"path": "f", "data": "from A"}))?;
    w.call(1, "write", json!({"path": "f", "data": "from B"}))?;
    w.deliver_all(0, |_| 0)?;
    w.deliver_all(1, |_| 0)?;
    for r in &w.replicas {
        let listed = names(&r.host, "")?;
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!(listed[0], "f");
        assert!(listed[1].starts_with("f.conflict-"), "{listed:?}");
        // B wrote later (HLC), so B's bytes keep the name; A's are beside it.
        assert_eq!(read(&r.host, "f")?, b"from B");
        assert_eq!(read(&r.host, &listed[1])?, b"from A");
    }
    assert_eq!(
        w.replicas[0].host.state_bytes(),
        w.replicas[1].host.state_bytes()
    );
    // Writing the file again (citing both) settles it.
    w.call(0, "resolve", json!({"path": "f"}))?;
    assert_eq!(names(&w.replicas[0].host, "")?, vec!["f"]);
    Ok(())
}

#[test]
fn an_edit_or_a_new_file_outlives_a_concurrent_removal() -> Result<(), StoreError> {
    let mut w = World::new(2);
    w.call(0, "mkdir", json!({"path": "d"}))?;
    w.call(0, "write", json!({"path": "f", "data": "v1"}))?;
    w.deliver_all(1, |_| 0)?;
    // A removes the file and the directory; B edits the file and adds into the directory.
    w.call(0, "unlink", json!({"path": "f"}))?;
    w.call(0, "rmdir", json!({"path": "d"}))?;
    w.call(1, "write", json!({"path": "f", "data": "v2"}))?;
    w.call(1, "write", json!({"path": "d/new", "data": "kept"}))?;
    w.deliver_all(0, |_| 0)?;
    w.deliver_all(1, |_| 0)?;
    for r in &w.replicas {
        assert_eq!(names(&r.host, "")?, vec!["d", "f"]);
        assert_eq!(read(&r.host, "f")?, b"v2");
        assert_eq!(read(&r.host, "d/new")?, b"kept");
    }
    assert_eq!(
        w.replicas[0].host.state_bytes(),
        w.replicas[1].host.state_bytes()
    );
    Ok(())
}

#[test]
fn directories_moved_into_each_other_show_at_the_root() -> Result<(), StoreError> {
    let mut w = World::new(2);
    w.call(0, "mkdir", json!({"path": "a"}))?;
    w.call(0, "mkdir", json!({"path": "b"}))?;
    w.call(0, "write", json!({"path": "a/x", "data": "in a"}))?;
    w.deliver_all(1, |_| 0)?;
    w.call(0, "rename", json!({"from": "a", "to": "b/a"}))?;
    w.call(1, "rename", json!({"from": "b", "to": "a/b"}))?;
    w.deliver_all(0, |_| 0)?;
    w.deliver_all(1, |_| 0)?;
    for r in &w.replicas {
        assert_eq!(names(&r.host, "")?, vec!["a", "b"]);
        assert_eq!(read(&r.host, "a/x")?, b"in a");
        walk(&r.host)?;
    }
    assert_eq!(
        w.replicas[0].host.state_bytes(),
        w.replicas[1].host.state_bytes()
    );
    // Moving one out again ends the cycle.
    w.call(0, "rename", json!({"from": "a", "to": "c"}))?;
    // b was placed in a, so it travels with it.
    let h = &w.replicas[0].host;
    assert_eq!(names(h, "")?, vec!["c"]);
    assert_eq!(names(h, "c")?, vec!["b", "x"]);
    Ok(())
}

/// One random command for the convergence test.
#[derive(Debug, Clone)]
enum Cmd {
    Write(u8, u8),
    Mkdir(u8),
    Rename(u8, u8),
    Unlink(u8),
    Rmdir(u8),
    Sync(u8),
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>()).prop_map(|(p, v)| Cmd::Write(p, v)),
        2 => any::<u8>().prop_map(Cmd::Mkdir),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Cmd::Rename(a, b)),
        1 => any::<u8>().prop_map(Cmd::Unlink),
        1 => any::<u8>().prop_map(Cmd::Rmdir),
        1 => any::<u8>().prop_map(Cmd::Sync),
    ]
}

/// Paths on replica `host` to pick from: its directories (the root first) and its entries.
fn choices(host: &MemoryHost) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let mut dirs = vec![String::new()];
    let mut entries = Vec::new();
    for (path, target) in walk(host)? {
        if let Target::Entry(id) = target {
            if tree::placed(host, &id)?.is_some_and(|p| p.loc.kind == crate::model::Kind::Dir) {
                dirs.push(path.clone());
            }
            entries.push(path);
        }
    }
    Ok((dirs, entries))
}

/// A new path: a name out of three in one of `dirs`.
fn fresh(dirs: &[String], n: u8) -> String {
    format!(
        "{}/{}",
        dirs[n as usize % dirs.len()],
        ["a", "b", "c"][(n / 64) as usize % 3]
    )
}

fn pick(entries: &[String], n: u8) -> String {
    entries
        .get(n as usize % entries.len().max(1))
        .cloned()
        .unwrap_or_else(|| "a".into())
}

/// Present entries that no path reaches would be lost from view.
fn check_nothing_hidden(host: &MemoryHost) -> Result<(), StoreError> {
    let reached: BTreeSet<Id> = walk(host)?
        .into_iter()
        .filter_map(|(_, t)| match t {
            Target::Entry(id) => Some(id),
            Target::Copy(..) => None,
        })
        .collect();
    for (key, _) in tree::scan_prefix(host, LOC) {
        let id: Id = key[LOC.len()..]
            .try_into()
            .map_err(|_| StoreError::Internal("id".into()))?;
        if tree::placed(host, &id)?.is_some_and(|p| p.present) {
            assert!(reached.contains(&id), "a present entry is unreachable");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Three replicas run random commands with random partial syncs, then receive everything
    /// in random causal orders: every replica ends with the same state bytes, the incremental
    /// tree equals one rebuilt from the registers, and every present entry is reachable.
    #[test]
    fn random_concurrent_histories_converge_in_every_order(
        cmds in prop::collection::vec((0..3usize, cmd()), 1..120),
        orders in prop::collection::vec(any::<u16>(), 64),
    ) {
        let mut w = World::new(3);
        let mut order = orders.iter().cycle().map(|n| *n as usize);
        for (r, c) in &cmds {
            let r = *r;
            let (dirs, entries) = choices(&w.replicas[r].host)
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            // Refusals (a directory written to, a directory not empty…) are fine: the call
            // wrote nothing.
            let _ = match c {
                Cmd::Write(p, v) if p % 2 == 0 => w.call(r, "write", json!({"path": pick(&entries, *p / 2), "data": format!("v{v}")})),
                Cmd::Write(p, v) => w.call(r, "write", json!({"path": fresh(&dirs, *p), "data": format!("v{v}")})),
                Cmd::Mkdir(p) => w.call(r, "mkdir", json!({"path": fresh(&dirs, *p)})),
                Cmd::Rename(a, b) => w.call(r, "rename", json!({"from": pick(&entries, *a), "to": fresh(&dirs, *b)})),
                Cmd::Unlink(p) => w.call(r, "unlink", json!({"path": pick(&entries, *p)})),
                Cmd::Rmdir(p) => w.call(r, "rmdir", json!({"path": pick(&entries, *p)})),
                Cmd::Sync(n) => w.deliver_all(r, |len| (*n as usize) % len),
            };
        }
        for r in 0..3 {
            w.deliver_all(r, |len| order.next().unwrap_or(0) % len)
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        }
        let first = w.replicas[0].host.state_bytes();
        for r in &w.replicas[1..] {
            prop_assert!(r.host.state_bytes() == first, "replicas differ");
        }
        let mut rebuilt = w.replicas[0].host.clone();
        tree::rebuild_for_test(&mut rebuilt).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert!(rebuilt.state_bytes() == first, "the incremental tree differs from a rebuild");
        check_nothing_hidden(&w.replicas[0].host).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let listing: HashMap<String, Target> = walk(&w.replicas[0].host)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?
            .into_iter()
            .collect();
        prop_assert!(listing.len() < 10_000);
    }
}
