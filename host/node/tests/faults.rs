//! Damaged files: bytes flipped, files truncated or deleted in one store's `log.db`,
//! `state.db` and `system.db` at random offsets (many seeds). The node never panics and keeps
//! serving the other store; damaged projections are rebuilt from the log on open; a damaged
//! log is reported and `repair` brings the store back with what its bytes still hold.

use std::path::Path;

use lattice_model::StoreId;
use lattice_node::{DataDir, Node, NodeError, StoreManager};
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const KEYS: usize = 30;

async fn start(dir: &Path) -> Result<StoreManager, NodeError> {
    StoreManager::start_offline(Node::open(DataDir::new(dir))?).await
}

async fn get(node: &StoreManager, store: &StoreId, key: &str) -> Result<String, NodeError> {
    let v = node.call(store, "get", &json!({"key": key})).await?;
    Ok(v["value"].as_str().unwrap_or_default().to_string())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A small deterministic generator (the test's seeds must reproduce).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() as usize) % n.max(1)
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Flip,
    Truncate,
    Delete,
}

fn damage(path: &Path, how: Damage, rng: &mut Rng) -> std::io::Result<()> {
    match how {
        Damage::Delete => std::fs::remove_file(path),
        Damage::Truncate => {
            let len = std::fs::metadata(path)?.len() as usize;
            let keep = rng.below(len);
            let bytes = std::fs::read(path)?;
            std::fs::write(path, &bytes[..keep])
        }
        Damage::Flip => {
            let mut bytes = std::fs::read(path)?;
            for _ in 0..24 {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 + rng.below(255) as u8;
            }
            std::fs::write(path, &bytes)
        }
    }
}

/// A data directory with two kv stores of `KEYS` keys each.
async fn pristine(dir: &Path) -> Result<(StoreId, StoreId), Box<dyn std::error::Error>> {
    let node = start(dir).await?;
    let a = node.create("kv", "a", None).await?;
    let b = node.create("kv", "b", None).await?;
    for i in 0..KEYS {
        for s in [&a, &b] {
            node.call(
                s,
                "put",
                &json!({"key": format!("k{i}"), "value": format!("v{i}")}),
            )
            .await?;
        }
    }
    node.shutdown().await;
    Ok((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_files_never_take_the_node_down_and_are_repaired() -> TestResult {
    let root = tempfile::tempdir()?;
    let base = root.path().join("base");
    let (a, b) = pristine(&base).await?;
    let mut rebuilt = 0;
    let mut quarantined = 0;
    for file in ["state.db", "system.db", "log.db"] {
        for how in [Damage::Flip, Damage::Truncate, Damage::Delete] {
            let seeds = if matches!(how, Damage::Delete) { 1 } else { 16 };
            for seed in 0..seeds {
                let case = format!("{file} {how:?} seed {seed}");
                let dir = root.path().join(format!("{file}-{how:?}-{seed}"));
                copy_dir(&base, &dir)?;
                let path = DataDir::new(&dir).store_dir(&a).join(file);
                damage(&path, how, &mut Rng(seed + 1))?;

                let node = start(&dir).await?;
                // The other store is served whatever happened to this one.
                for i in 0..KEYS {
                    assert_eq!(
                        get(&node, &b, &format!("k{i}")).await?,
                        format!("v{i}"),
                        "{case}"
                    );
                }
                if let Some(reason) = node.damage(&a) {
                    quarantined += 1;
                    assert_eq!(
                        file, "log.db",
                        "{case}: only a damaged log quarantines: {reason}"
                    );
                    let refused = get(&node, &a, "k0").await;
                    assert!(
                        matches!(refused, Err(NodeError::Damaged { .. })),
                        "{case}: {refused:?}"
                    );
                    let report = node.repair(&a).await?;
                    assert!(report.log_problem.is_some(), "{case}: {report:?}");
                    assert!(node.damage(&a).is_none(), "{case}");
                    // What the bytes still held is served again; nothing reads wrong.
                    for i in 0..KEYS {
                        match get(&node, &a, &format!("k{i}")).await {
                            Ok(v) => assert!(v.is_empty() || v == format!("v{i}"), "{case}: {v}"),
                            Err(NodeError::NotReady(_)) => {}
                            Err(e) => panic!("{case}: {e}"),
                        }
                    }
                } else {
                    if file != "log.db" {
                        rebuilt += 1;
                    }
                    // Projections damaged or not, the log has every write: all of them read.
                    for i in 0..KEYS {
                        assert_eq!(
                            get(&node, &a, &format!("k{i}")).await?,
                            format!("v{i}"),
                            "{case}"
                        );
                    }
                }
                node.shutdown().await;
            }
        }
    }
    assert!(
        rebuilt > 0 && quarantined > 0,
        "rebuilt {rebuilt}, quarantined {quarantined}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_whose_header_is_gone_is_rebuilt_from_its_bytes_without_loss() -> TestResult {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("node");
    let (a, b) = pristine(&dir).await?;
    let path = DataDir::new(&dir).log_path(&a);
    let mut bytes = std::fs::read(&path)?;
    bytes[..4096].fill(0);
    std::fs::write(&path, &bytes)?;

    let node = start(&dir).await?;
    assert!(node.damage(&a).is_some());
    assert!(node.damage(&b).is_none());
    let report = node.repair(&a).await?;
    assert_eq!(report.dropped, 0, "{report:?}");
    // Genesis, system table records and every put.
    assert!(report.salvaged > KEYS as u64, "{report:?}");
    for i in 0..KEYS {
        assert_eq!(get(&node, &a, &format!("k{i}")).await?, format!("v{i}"));
    }
    // The repaired store takes writes again, and survives a restart.
    node.call(&a, "put", &json!({"key": "after", "value": "repair"}))
        .await?;
    node.shutdown().await;
    drop(node);
    let node = start(&dir).await?;
    assert_eq!(get(&node, &a, "after").await?, "repair");
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_damaged_inventory_is_rebuilt_from_the_stores_on_disk() -> TestResult {
    let root = tempfile::tempdir()?;
    let base = root.path().join("base");
    let (a, b) = pristine(&base).await?;
    let child = {
        let node = start(&base).await?;
        let child = node.create("kv", "child", Some(a)).await?;
        node.call(&child, "put", &json!({"key": "c", "value": "child"}))
            .await?;
        node.shutdown().await;
        child
    };
    let cases: [(&str, Damage); 4] = [
        ("deleted", Damage::Delete),
        ("emptied", Damage::Truncate),
        ("flipped", Damage::Flip),
        ("flipped again", Damage::Flip),
    ];
    for (seed, (case, how)) in cases.into_iter().enumerate() {
        let dir = root.path().join(format!("meta-{seed}"));
        copy_dir(&base, &dir)?;
        let meta = DataDir::new(&dir).meta_path();
        if matches!(how, Damage::Truncate) {
            std::fs::write(&meta, b"")?;
        } else {
            damage(&meta, how, &mut Rng(seed as u64 + 7))?;
        }
        let node = start(&dir).await?;
        let list = node.list()?;
        for id in [a, b, child] {
            assert!(list.iter().any(|r| r.id == id), "{case}: {id} missing");
        }
        let record = list.iter().find(|r| r.id == child).cloned();
        assert_eq!(record.and_then(|r| r.parent), Some(a), "{case}");
        assert!(
            list.iter().any(|r| r.name == "a"),
            "{case}: names from the genesis"
        );
        for i in 0..KEYS {
            assert_eq!(
                get(&node, &a, &format!("k{i}")).await?,
                format!("v{i}"),
                "{case}"
            );
            assert_eq!(
                get(&node, &b, &format!("k{i}")).await?,
                format!("v{i}"),
                "{case}"
            );
        }
        assert_eq!(get(&node, &child, "c").await?, "child", "{case}");
        node.shutdown().await;
    }
    Ok(())
}
