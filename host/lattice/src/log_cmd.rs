//! `lattice log …`: low-level access to one store's log.

use anyhow::{Context as _, bail};
use lattice_log::{Draft, Incoming, Log, LogConfig, build_genesis, system_now_ms};
use lattice_model::{MAX_CAUSAL_DEPS, StoreId};
use lattice_node::DataDir;
use lattice_proto::v1;
use serde_json::{Value, json};

use crate::api::{Client, SOCKET};

use crate::cli::LogCommand;
use crate::output::Output;

pub(crate) fn run(cmd: LogCommand, dir: &DataDir, out: &Output) -> anyhow::Result<()> {
    match cmd {
        LogCommand::Create { ops } => create(dir, ops, out),
        LogCommand::Append { store, ops } => append(dir, &store, ops, out),
        LogCommand::Status { store } => status(dir, &store, out),
        LogCommand::Verify { store } => verify(dir, &store, out),
    }
}

/// Resolves a full id or a unique prefix against the stores in the data dir.
fn resolve(dir: &DataDir, text: &str) -> anyhow::Result<StoreId> {
    let text = text.trim().to_ascii_lowercase();
    if !text.chars().all(|c| c.is_ascii_hexdigit()) || text.is_empty() {
        bail!("store id {text:?} is not hex; `lattice log create` prints ids");
    }
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir.stores_dir()) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "no stores in {}; create one with `lattice log create`",
                dir.root().display()
            )
        }
        Err(e) => return Err(e).context("reading the stores directory"),
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().to_string();
        if name.starts_with(&text)
            && let Ok(id) = StoreId::from_hex(&name)
        {
            found.push(id);
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => bail!(
            "no store matches {text} in {}; list them with `ls {}`",
            dir.root().display(),
            dir.stores_dir().display()
        ),
        _ => bail!(
            "{text} matches {} stores; give more characters",
            found.len()
        ),
    }
}

fn open(dir: &DataDir, store: StoreId) -> anyhow::Result<Log> {
    let key = dir.load_or_create_identity()?;
    match Log::open(&dir.log_path(&store), store, key, LogConfig::default()) {
        Err(lattice_log::OpenError::AlreadyOpen { .. }) => bail!(
            "the log of store {} is open in a running Lattice process (the daemon?); `lattice log verify` and `lattice store status` work through it, other `lattice log` commands need it stopped (`lattice node stop`)",
            store.short()
        ),
        other => other.with_context(|| format!("opening the log of store {}", store.short())),
    }
}

/// Verifies through the running daemon of `dir`, if one answers; `None` when none runs.
fn verify_through_daemon(dir: &DataDir, store: StoreId) -> anyhow::Result<Option<Value>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let Some(mut client) = Client::connect(&dir.root().join(SOCKET)).await else {
            return Ok(None);
        };
        let reply = match client
            .store
            .verify_log(v1::StoreRequest {
                store: store.to_string(),
            })
            .await
        {
            Ok(reply) => reply,
            // Not open in the daemon (archived, left): its log is free to open here.
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => bail!(
                "store {} failed verification: {}",
                store.short(),
                s.message()
            ),
        };
        Ok(Some(serde_json::from_str(&reply.into_inner().json)?))
    })
}

fn create(dir: &DataDir, ops: String, out: &Output) -> anyhow::Result<()> {
    let key = dir.load_or_create_identity()?;
    let genesis = build_genesis(&key, ops.into_bytes(), system_now_ms())?;
    let store = StoreId::from(genesis.hash());
    std::fs::create_dir_all(dir.store_dir(&store)).context("creating the store directory")?;
    let log = open(dir, store)?;
    let results = log.ingest(vec![Incoming::new(genesis.as_bytes().to_vec())])?;
    if let Some(Err(e)) = results.first() {
        bail!("the genesis intention was refused: {e}");
    }
    log.close()?;
    out.record(
        &format!("created store {store}"),
        json!({ "store": store.to_string(), "genesis": genesis.hash().to_string() }),
    );
    Ok(())
}

fn append(dir: &DataDir, store: &str, ops: String, out: &Output) -> anyhow::Result<()> {
    let store = resolve(dir, store)?;
    let log = open(dir, store)?;
    let me = dir.load_or_create_identity()?.public();
    let deps = log
        .reader()
        .tips()?
        .into_iter()
        .filter(|(author, _)| *author != me)
        .map(|(_, hash)| hash)
        .take(MAX_CAUSAL_DEPS)
        .collect();
    let written = log.author(Draft {
        ops: ops.into_bytes(),
        deps,
        ..Draft::default()
    })?;
    log.close()?;
    out.record(
        &format!(
            "appended {} at seq {} (hlc {})",
            written.hash, written.seq, written.hlc
        ),
        json!({ "hash": written.hash.to_string(), "seq": written.seq, "hlc": written.hlc.to_string() }),
    );
    Ok(())
}

fn status(dir: &DataDir, store: &str, out: &Output) -> anyhow::Result<()> {
    let store = resolve(dir, store)?;
    let log = open(dir, store)?;
    let s = log.reader().status()?;
    let tips = log.reader().tips()?;
    out.record(
        &format!(
            "store     {store}\nwitnessed {}\nhead      {}\nfloating  {} ({} bytes)\nauthors   {}",
            s.head_seq,
            s.head_hash,
            s.floating,
            s.floating_bytes,
            tips.len()
        ),
        json!({
            "store": store.to_string(),
            "head_seq": s.head_seq,
            "head_hash": s.head_hash.to_string(),
            "floating": s.floating,
            "floating_bytes": s.floating_bytes,
            "tips": tips.iter().map(|(a, h)| json!({"author": a.to_string(), "tip": h.to_string()})).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}

fn verify(dir: &DataDir, store: &str, out: &Output) -> anyhow::Result<()> {
    let store = resolve(dir, store)?;
    let (records, attestations, intentions) = match verify_through_daemon(dir, store)? {
        Some(v) => (
            v["records"].clone(),
            v["attestations"].clone(),
            v["intentions"].clone(),
        ),
        None => {
            let log = open(dir, store)?;
            let report = log
                .reader()
                .verify(|done, total| out.progress(&format!("verified {done}/{total} records")))
                .with_context(|| {
                    format!("store {} failed verification; its log.db is damaged — `lattice store repair {}` rebuilds it from what still verifies and its peers", store.short(), store.short())
                })?;
            (
                report.records.into(),
                report.attestations.into(),
                report.intentions.into(),
            )
        }
    };
    out.record(
        &format!(
            "ok: {records} records chained and attested ({attestations} attestations), {intentions} intention signatures valid"
        ),
        json!({
            "ok": true,
            "records": records,
            "attestations": attestations,
            "intentions": intentions,
        }),
    );
    Ok(())
}
