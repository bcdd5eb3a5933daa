//! `lattice bench store`: durable puts through the kv guest in Wasm, and the same workload
//! with the kv logic compiled natively into the host, so the Wasm cost is a ratio.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::time::Instant;

use anyhow::{Context as _, bail};
use lattice_guest_kvstore::KvStore;
use lattice_log::{
    AuthorError, Authored, Draft, Incoming, Log, LogConfig, LogReader, Pending, build_genesis,
    system_now_ms,
};
use lattice_model::{Hash, StoreId};
use lattice_node::{DataDir, Node, StoreGenesis};
use lattice_runtime::{BUILTIN_MODULES, Limits, ModuleHash, Runtime};
use lattice_sdk::{Args, Hlc, Host, Intention, StoreType};
use redb::{Database, Durability, ReadableDatabase as _, TableDefinition};
use serde_json::json;

use crate::cli::BenchStoreArgs;
use crate::output::Output;

const WINDOW: usize = 4096;

type PendingPut = Pending<Result<Authored, AuthorError>>;

fn kv_bytes() -> anyhow::Result<&'static [u8]> {
    BUILTIN_MODULES
        .iter()
        .find(|(n, _)| *n == "kvstore")
        .map(|(_, b)| *b)
        .context("the kvstore module is not built in")
}

fn value(payload: usize) -> String {
    "v".repeat(payload)
}

pub(crate) fn run(args: BenchStoreArgs, out: &Output) -> anyhow::Result<()> {
    let n = usize::try_from(args.count)?;
    let payload = usize::try_from(args.payload)?;
    let tmp = tempfile::tempdir()?;
    out.progress(&format!(
        "lattice bench store: {n} puts per phase, {payload}-byte values, data in {}",
        tmp.path().display()
    ));

    // Instantiation: cold (compile + instantiate) and cached (compiled code from disk).
    let modules = tmp.path().join("modules");
    let start = Instant::now();
    let runtime = Runtime::new(&modules, Limits::default())?;
    let module = runtime.install(kv_bytes()?)?;
    runtime.instantiate(&module)?;
    let cold_us = start.elapsed().as_secs_f64() * 1e6;
    let runtime = Runtime::new(&modules, Limits::default())?;
    let start = Instant::now();
    let module = runtime.load(&module.hash())?;
    runtime.instantiate(&module)?;
    let cached_us = start.elapsed().as_secs_f64() * 1e6;

    // Wasm: prepare in the guest, author durably, project through the guest.
    let node = Node::open(DataDir::new(tmp.path().join("wasm")))?;
    let mut store = node.create_store(node.resolve_type("kv")?, "bench")?;
    let v = value(payload);
    let start = Instant::now();
    let mut pending: VecDeque<PendingPut> = VecDeque::with_capacity(WINDOW);
    for i in 0..n {
        if pending.len() >= WINDOW {
            // Keep half the window in flight while projecting what is durable.
            drain_some(&mut pending, WINDOW / 2)?;
            store.project()?;
        }
        pending.push_back(store.submit("put", &json!({"key": format!("key{i:08}"), "value": v}))?);
    }
    drain(&mut pending)?;
    let report = store.project()?;
    let wasm_s = start.elapsed().as_secs_f64();
    let status = store.status()?;
    // Everything witnessed (the genesis, the creator's system entries, the puts) is projected.
    if status.projected != status.witnessed || status.rejected != 0 || report.rejected != 0 {
        bail!(
            "wasm phase projected {} of {} witnessed with {} rejected",
            status.projected,
            status.witnessed,
            status.rejected
        );
    }
    drop(report);
    out.progress(&format!("wasm: {n} durable puts in {wasm_s:.2} s"));

    // Host↔guest call cost: a query that reads one key.
    let calls = 20_000usize;
    let probe = json!({"key": "key00000001"});
    let start = Instant::now();
    for _ in 0..calls {
        store.query_now("get", &probe)?;
    }
    let call_ns = start.elapsed().as_secs_f64() * 1e9 / calls as f64;

    // Apply rate: rebuild the whole state from the log through the guest.
    let start = Instant::now();
    let rebuilt = store.rebuild()?;
    let apply_s = start.elapsed().as_secs_f64();
    if rebuilt.applied != n as u64 {
        bail!("rebuild applied {} of {n}", rebuilt.applied);
    }
    let wasm_digest_keys = n;

    // The node's write path without the API: runs of 1 and of 16 commands (what the store
    // actor does with one caller and with 16 in flight), each run one group commit.
    let runs = (n / 16).clamp(1, 2000);
    let mut run_rates = Vec::new();
    for size in [1usize, 16] {
        let start = Instant::now();
        for r in 0..runs {
            let calls: Vec<(String, serde_json::Value)> = (0..size)
                .map(|i| {
                    let key = format!("run{size}-{r:06}-{i:02}");
                    ("put".to_string(), json!({"key": key, "value": v}))
                })
                .collect();
            for result in store.write_run(&calls) {
                result?;
            }
        }
        run_rates.push((runs * size) as f64 / start.elapsed().as_secs_f64());
    }
    out.progress(&format!(
        "write runs: {:.0} puts/s one at a time, {:.0} puts/s in runs of 16",
        run_rates[0], run_rates[1]
    ));
    store.close()?;

    // Native: the same kv logic compiled into the host, same log and state.db pattern.
    let native_s = native_puts(tmp.path(), n, &v)?;
    out.progress(&format!("native: {n} durable puts in {native_s:.2} s"));

    let put_per_s = n as f64 / wasm_s;
    let native_put_per_s = n as f64 / native_s;
    let apply_per_s = n as f64 / apply_s;
    out.record(
        &format!(
            "put        {put_per_s:>10.0} /s  (kv guest in Wasm: prepare + durable write + apply)\n\
             native put {native_put_per_s:>10.0} /s  (same kv logic compiled natively)  → Wasm at {:.0}% of native\n\
             apply      {apply_per_s:>10.0} /s  (state rebuilt from the log through the guest)\n\
             call       {call_ns:>10.0} ns (query through the guest, one host kv-get)\n\
             instantiate {cold_us:>9.0} µs cold (compile), {cached_us:.0} µs cached\n\
             run put    {:>10.0} /s  (the store actor's write path, one put per group commit)\n\
             run16 put  {:>10.0} /s  (the same with 16 puts per group commit)",
            100.0 * put_per_s / native_put_per_s,
            run_rates[0],
            run_rates[1],
        ),
        json!({
            "count": wasm_digest_keys,
            "payload": payload,
            "put_per_s": put_per_s.round(),
            "native_put_per_s": native_put_per_s.round(),
            "apply_per_s": apply_per_s.round(),
            "call_ns": call_ns.round(),
            "instantiate_us_cold": cold_us.round(),
            "instantiate_us_cached": cached_us.round(),
            "run1_put_per_s": run_rates[0].round(),
            "run16_put_per_s": run_rates[1].round(),
        }),
    );
    Ok(())
}

fn drain(pending: &mut VecDeque<PendingPut>) -> anyhow::Result<()> {
    drain_some(pending, usize::MAX)
}

fn drain_some(pending: &mut VecDeque<PendingPut>, count: usize) -> anyhow::Result<()> {
    for _ in 0..count {
        match pending.pop_front() {
            Some(p) => {
                p.wait()??;
            }
            None => break,
        }
    }
    Ok(())
}

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The SDK's `Host` over a redb snapshot plus an in-memory overlay (what the Wasm host does).
struct NativeHost {
    snapshot: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Blobs put (the put workload's values are small: none in practice).
    blobs: std::cell::RefCell<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Host for NativeHost {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(v) = self.overlay.get(key) {
            return v.clone();
        }
        self.snapshot
            .get(key)
            .ok()
            .flatten()
            .map(|v| v.value().to_vec())
    }
    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        // The put workload never scans; keep it simple and correct.
        let mut all: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        if let Ok(range) = self
            .snapshot
            .range::<&[u8]>((Bound::Included(start), upper))
        {
            for (k, v) in range.flatten() {
                all.insert(k.value().to_vec(), v.value().to_vec());
            }
        }
        for (k, v) in &self.overlay {
            if k.as_slice() >= start && end.is_none_or(|e| k.as_slice() < e) {
                match v {
                    Some(v) => all.insert(k.clone(), v.clone()),
                    None => all.remove(k),
                };
            }
        }
        all.into_iter().take(limit as usize).collect()
    }
    fn heads(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.overlay.insert(key.to_vec(), Some(value.to_vec()));
    }
    fn delete(&mut self, key: &[u8]) {
        self.overlay.insert(key.to_vec(), None);
    }
    fn log_append(&mut self, _: &[u8]) -> u64 {
        0
    }
    fn blob_put(&self, bytes: &[u8]) -> Vec<u8> {
        let hash = blake3::hash(bytes).as_bytes().to_vec();
        self.blobs.borrow_mut().insert(hash.clone(), bytes.to_vec());
        hash
    }
    fn blob_read(
        &self,
        hash: &[u8],
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, lattice_sdk::BlobError> {
        let blobs = self.blobs.borrow();
        let blob = blobs.get(hash).ok_or(lattice_sdk::BlobError::NotHere)?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(blob.len());
        let end = blob.len().min(start.saturating_add(len as usize));
        Ok(blob[start..end].to_vec())
    }
    fn blob_add_ref(&mut self, _: &[u8]) {}
    fn blob_drop_ref(&mut self, _: &[u8]) {}
    fn emit(&mut self, _: &str, _: &[u8]) {}
}

fn native_puts(dir: &std::path::Path, n: usize, v: &str) -> anyhow::Result<f64> {
    let dir = DataDir::new(dir.join("native"));
    let key = dir.load_or_create_identity()?;
    let genesis = StoreGenesis {
        module: ModuleHash::of(kv_bytes()?),
        name: "native".into(),
    };
    let signed = build_genesis(&key, genesis.encode(), system_now_ms())?;
    let id = StoreId::from(signed.hash());
    std::fs::create_dir_all(dir.store_dir(&id))?;
    let log = Log::open(&dir.log_path(&id), id, key.clone(), LogConfig::default())?;
    log.ingest(vec![Incoming::new(signed.as_bytes().to_vec())])?;
    let db = redb::Builder::new()
        .set_cache_size(16 << 20)
        .create(dir.state_path(&id))?;
    {
        let txn = db.begin_write()?;
        txn.open_table(DATA)?;
        txn.open_table(META)?;
        txn.commit()?;
    }
    let mut cursor = 1u64;
    let genesis_dep = Hash(id.0);
    let start = Instant::now();
    let mut pending: VecDeque<PendingPut> = VecDeque::with_capacity(WINDOW);
    for i in 0..n {
        if pending.len() >= WINDOW {
            drain_some(&mut pending, WINDOW / 2)?;
            cursor = native_project(&db, log.reader(), cursor)?;
        }
        let host = NativeHost {
            snapshot: db.begin_read()?.open_table(DATA)?,
            overlay: BTreeMap::new(),
            blobs: std::cell::RefCell::default(),
        };
        let args = Args::from_json(json!({"key": format!("key{i:08}"), "value": v}));
        let prepared =
            KvStore::prepare(&host, "put", &args).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut deps: Vec<Hash> = prepared
            .deps
            .iter()
            .filter_map(|d| <[u8; 32]>::try_from(d.as_slice()).ok().map(Hash))
            .collect();
        if i == 0 {
            deps.push(genesis_dep);
        }
        pending.push_back(log.submit_author(Draft {
            ops: prepared.ops,
            deps,
            ..Draft::default()
        }));
    }
    drain(&mut pending)?;
    let cursor = native_project(&db, log.reader(), cursor)?;
    let elapsed = start.elapsed().as_secs_f64();
    if cursor != n as u64 + 1 {
        bail!("native phase projected {cursor} of {}", n + 1);
    }
    log.close()?;
    Ok(elapsed)
}

fn native_project(db: &Database, log: &LogReader, mut cursor: u64) -> anyhow::Result<u64> {
    loop {
        let batch = log.witnessed(cursor + 1, 512)?;
        if batch.is_empty() {
            return Ok(cursor);
        }
        let mut host = NativeHost {
            snapshot: db.begin_read()?.open_table(DATA)?,
            overlay: BTreeMap::new(),
            blobs: std::cell::RefCell::default(),
        };
        for (seq, signed) in &batch {
            cursor = *seq;
            let i = signed.intention();
            let op = Intention {
                hash: signed.hash().as_bytes().to_vec(),
                author: i.author().as_bytes().to_vec(),
                hlc: Hlc {
                    wall_ms: i.hlc().wall_ms,
                    counter: i.hlc().counter,
                },
                deps: i.deps().iter().map(|d| d.as_bytes().to_vec()).collect(),
                ops: i.ops().to_vec(),
            };
            KvStore::apply(&mut host, &op).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut data = txn.open_table(DATA)?;
            for (k, v) in &host.overlay {
                match v {
                    Some(v) => data.insert(k.as_slice(), v.as_slice())?,
                    None => data.remove(k.as_slice())?,
                };
            }
            txn.open_table(META)?
                .insert("cursor", cursor.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
    }
}
