//! Helpers shared by the store tests: copying intentions between stores' logs by hand, so a
//! test decides exactly what each node has seen and in which order.
#![allow(dead_code, reason = "each test binary uses its own subset")]

use lattice_log::Incoming;
use lattice_node::Node;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Every intention witnessed in `store`'s log, in witness order.
pub fn all_of(
    store: &lattice_node::Store,
) -> Result<Vec<lattice_model::SignedIntention>, Box<dyn std::error::Error>> {
    Ok(store
        .log()
        .reader()
        .witnessed(1, 10_000)?
        .into_iter()
        .map(|(_, s)| s)
        .collect())
}

/// Ingests `items` into `store`'s log (not projected).
pub fn feed(store: &lattice_node::Store, items: &[lattice_model::SignedIntention]) -> TestResult {
    let incoming = items
        .iter()
        .map(|s| Incoming::new(s.as_bytes().to_vec()))
        .collect();
    for r in store.log().ingest(incoming)? {
        r?;
    }
    Ok(())
}

/// Copies every intention `from` has that `to` lacks (in `from`'s witness order).
pub fn sync_into(from: &lattice_node::Store, to: &lattice_node::Store) -> TestResult {
    let have: std::collections::HashSet<_> = all_of(to)?.iter().map(|s| s.hash()).collect();
    let missing: Vec<_> = all_of(from)?
        .into_iter()
        .filter(|s| !have.contains(&s.hash()))
        .collect();
    feed(to, &missing)
}

/// Copies between every ordered pair of `stores`, so each has what any of them had.
pub fn exchange(stores: &[lattice_node::Store]) -> TestResult {
    for from in stores {
        for to in stores {
            if !std::ptr::eq(from, to) {
                sync_into(from, to)?;
            }
        }
    }
    Ok(())
}

/// A replica of `source` on `node` (the module installed first).
pub fn replica_of(
    node: &Node,
    source: &lattice_node::Store,
) -> Result<lattice_node::Store, Box<dyn std::error::Error>> {
    node.resolve_type("kv")?;
    for r in node.ingest_replica(
        source.id(),
        all_of(source)?
            .iter()
            .map(|s| Incoming::new(s.as_bytes().to_vec()))
            .collect(),
    )? {
        r?;
    }
    Ok(node.open_store(source.id())?)
}

/// Every order of `items` (small inputs only).
pub fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first.clone());
            out.push(tail);
        }
    }
    out
}

/// `count` puts over `keys` keys (`k0`, `k1`, …, values `<tag>-<i>`), in write runs.
pub fn fill(store: &mut lattice_node::Store, tag: &str, count: usize, keys: usize) -> TestResult {
    let calls: Vec<(String, serde_json::Value)> = (0..count)
        .map(|i| {
            (
                "put".to_string(),
                serde_json::json!({"key": format!("k{}", i % keys), "value": format!("{tag}-{i}")}),
            )
        })
        .collect();
    for run in calls.chunks(256) {
        for r in store.write_run(run) {
            r?;
        }
    }
    Ok(())
}
