//! `lattice node …`, `lattice store …`, `lattice module …` and the kv shortcuts: clients of
//! the local API. They ask the running `lattice daemon` of the data directory; without one
//! (or with `--embedded`) they run the node in this process for the one command.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use lattice_net::ReplicatorConfig;
use lattice_node::{DataDir, Node, StoreManager};
use lattice_proto::v1;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_stream::StreamExt as _;

use crate::api::{self, Api, Client, SOCKET};
use crate::cli::{CasCommand, FsCommand, ModuleCommand, NodeCommand, StoreCommand};
use crate::output::Output;

/// What a client command does.
#[derive(Debug)]
pub(crate) enum ClientCommand {
    Node(NodeCommand),
    Store(StoreCommand),
    Module(ModuleCommand),
    Cas(CasCommand),
    Fs(FsCommand),
    /// A kv shortcut: method and arguments.
    Kv {
        store: String,
        method: &'static str,
        args: Value,
    },
}

/// A node run in this process for one command, with its API on a private socket.
struct InProcess {
    manager: StoreManager,
    api: Api,
    stop: Arc<Notify>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _socket_dir: tempfile::TempDir,
}

/// A connection to the node: the daemon's, or an in-process node's.
struct Session {
    client: Client,
    embedded: Option<InProcess>,
}

impl ClientCommand {
    /// True for commands that must reach peers (invites, joins, leaving, watching what
    /// arrives); the rest run on the local data with no network when no daemon runs.
    fn needs_network(&self) -> bool {
        matches!(
            self,
            ClientCommand::Store(
                StoreCommand::Invite { .. }
                    | StoreCommand::Join { .. }
                    | StoreCommand::Leave { .. }
                    | StoreCommand::Rejoin { .. }
                    | StoreCommand::Watch { .. }
            ) | ClientCommand::Cas(CasCommand::Get { local: false, .. } | CasCommand::Pin { .. })
                | ClientCommand::Fs(FsCommand::Get { .. } | FsCommand::Mount { .. })
        )
    }
}

/// How long a command waits for a data directory another process holds (a daemon starting or
/// stopping, another one-shot command) before it gives up.
pub(crate) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
/// How often the lock and the socket are looked at again meanwhile.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The file a starting daemon keeps (with its process id) until its socket answers.
pub(crate) const STARTING: &str = "daemon.starting";

/// True while a daemon that is alive says it is starting on `dir`.
fn daemon_starting(dir: &DataDir) -> bool {
    std::fs::read_to_string(dir.root().join(STARTING))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Marks `dir` as having a daemon starting, until dropped.
pub(crate) struct StartingMark(std::path::PathBuf);

impl StartingMark {
    /// Writes the mark with this process's id.
    pub(crate) fn new(dir: &DataDir) -> anyhow::Result<StartingMark> {
        let path = dir.root().join(STARTING);
        std::fs::write(&path, std::process::id().to_string())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(StartingMark(path))
    }
}

impl Drop for StartingMark {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What opening a data directory found.
#[allow(
    clippy::large_enum_variant,
    reason = "made once per command, then taken apart"
)]
pub(crate) enum Opened {
    /// This process holds the data directory now.
    Node(Node),
    /// A daemon serves it (only when a socket was given).
    Daemon(Client),
}

/// Opens the node of `dir`. While another process holds the data directory, waits up to
/// [`LOCK_WAIT`] for it to let go — or, with `socket`, for a daemon to answer there (one that
/// is starting): the data-dir lock and the socket together decide, so a command never runs
/// the node beside a daemon, and a daemon never fails because a one-shot command was running.
///
/// # Errors
/// [`lattice_node::NodeError::Locked`] when the directory stays held; other open failures.
pub(crate) async fn open_node(
    dir: &DataDir,
    socket: Option<&std::path::Path>,
    out: &Output,
) -> anyhow::Result<Opened> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    let mut told = false;
    loop {
        if let Some(socket) = socket {
            if let Some(client) = Client::connect(socket).await {
                return Ok(Opened::Daemon(client));
            }
            // A daemon is starting: leave the lock to it and wait for its socket.
            if daemon_starting(dir) && tokio::time::Instant::now() < deadline {
                if !told {
                    out.progress("the daemon is starting; waiting for it…");
                    told = true;
                }
                tokio::time::sleep(LOCK_POLL).await;
                continue;
            }
        }
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || Node::open(d)).await? {
            Ok(node) => return Ok(Opened::Node(node)),
            Err(lattice_node::NodeError::Locked(_)) if tokio::time::Instant::now() < deadline => {
                if !told {
                    out.progress(
                        "the data directory is in use (a daemon starting or stopping, or another command); waiting for it…",
                    );
                    told = true;
                }
                tokio::time::sleep(LOCK_POLL).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl Session {
    async fn open(
        dir: &DataDir,
        embedded: bool,
        network: bool,
        out: &Output,
    ) -> anyhow::Result<Session> {
        let socket = dir.root().join(SOCKET);
        let node = match open_node(dir, (!embedded).then_some(socket.as_path()), out).await? {
            Opened::Daemon(client) => {
                return Ok(Session {
                    client,
                    embedded: None,
                });
            }
            Opened::Node(node) => node,
        };
        let manager = if network {
            StoreManager::start_iroh(
                node,
                ([127, 0, 0, 1], 0).into(),
                ReplicatorConfig::default(),
            )
            .await?
        } else {
            StoreManager::start_offline(node).await?
        };
        let private = tempfile::Builder::new()
            .prefix("lattice-embedded-")
            .tempdir()?;
        let path = private.path().join(SOCKET);
        let stop = Arc::new(Notify::new());
        let listener = api::bind(&path)?;
        let api = Api::new(manager.clone(), Arc::new(Notify::new()));
        let server = tokio::spawn(api::serve_on(api.clone(), listener, stop.clone()));
        let client = Client::connect(&path)
            .await
            .context("connecting to the in-process node")?;
        Ok(Session {
            client,
            embedded: Some(InProcess {
                manager,
                api,
                stop,
                server,
                _socket_dir: private,
            }),
        })
    }

    async fn close(self) {
        if let Some(p) = self.embedded {
            p.api.unmount_all().await;
            p.stop.notify_one();
            let _ = p.server.await;
            p.manager.shutdown().await;
        }
    }
}

pub(crate) fn run(
    cmd: ClientCommand,
    dir: &DataDir,
    embedded: bool,
    out: &Output,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let session = Session::open(dir, embedded, cmd.needs_network(), out).await?;
        let result = dispatch(cmd, session.client.clone(), out).await;
        session.close().await;
        result
    })
}

/// How long `node stop` waits for the daemon process to exit.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until process `pid` has exited (Linux: `/proc/<pid>` is gone).
async fn wait_for_exit(pid: u32) -> anyhow::Result<()> {
    // Running while /proc/<pid>/stat exists and does not say zombie (exited, not reaped).
    let stat = std::path::PathBuf::from(format!("/proc/{pid}/stat"));
    let running = || {
        std::fs::read_to_string(&stat).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    };
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
    while running() {
        if tokio::time::Instant::now() >= deadline {
            return Err(crate::output::CliError::new(
                "stop_timeout",
                format!(
                    "the daemon (pid {pid}) asked to stop has not exited after {} s; see its log, or end it with `kill {pid}`",
                    STOP_TIMEOUT.as_secs()
                ),
            )
            .into());
        }
        tick.tick().await;
    }
    Ok(())
}

/// The snake_case name of a gRPC status code (the stable code when the node sent none).
fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Turns a gRPC status into the one-line error the CLI prints, with its stable code.
pub(crate) fn err(status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let stable = status
        .metadata()
        .get(crate::api::CODE_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (code, message) = match stable {
        Some(code) => (code, status.message().to_string()),
        None => match status.code() {
            // No code from the node: the transport failed (the daemon went away mid-call).
            Code::Unknown | Code::Cancelled | Code::Unavailable => (
                "daemon_unreachable".to_string(),
                format!(
                    "the daemon stopped answering ({}): it died or was stopped during the call, so whether a write landed is unknown; read it back once a node runs again (`lattice get`, `lattice store history`) before writing it again",
                    status.message()
                ),
            ),
            other => (
                grpc_code_name(other).to_string(),
                status.message().to_string(),
            ),
        },
    };
    crate::output::CliError::new(code, message).into()
}

fn parse(reply: tonic::Response<v1::JsonReply>) -> anyhow::Result<Value> {
    serde_json::from_str(&reply.into_inner().json).context("the node answered with invalid JSON")
}

/// The `--json` form of a store status (only `store` and `state` when it is not open).
fn status_json(s: v1::StoreStatus) -> Value {
    if !s.damage.is_empty() {
        return json!({"store": s.store, "name": s.name, "state": s.state, "damage": s.damage});
    }
    if !s.open {
        return json!({"store": s.store, "state": s.state});
    }
    let epoch = s.epoch.map(|e| {
        let lag: Vec<Value> = e
            .lag
            .iter()
            .map(|l| json!({"peer": l.peer, "behind": l.behind}))
            .collect();
        let state = (!e.state.is_empty()).then_some(e.state);
        json!({
            "number": e.number, "hash": e.hash, "settled": e.settled, "waiting": e.waiting,
            "lag": lag, "state": state, "finalized": e.finalized, "disagreeing": e.disagreeing,
        })
    });
    json!({
        "store": s.store, "name": s.name, "module": s.module, "headless": s.headless,
        "headless_by_choice": s.headless_by_choice,
        "witnessed": s.witnessed, "projected": s.projected, "floating": s.floating,
        "rejected": s.rejected, "state": s.state, "epoch": epoch,
        "log_bytes": s.log_bytes, "state_bytes": s.state_bytes,
    })
}

/// One line for `store status`: the current epoch and its settlement.
fn epoch_text(epoch: &Value) -> String {
    if epoch.is_null() {
        return "none yet".to_string();
    }
    let waiting = epoch["waiting"].as_array().map_or(0, Vec::len);
    let disagreeing = epoch["disagreeing"].as_array().map_or(0, Vec::len);
    let settled = if disagreeing > 0 {
        format!("{disagreeing} peer(s) state another hash of its state")
    } else if epoch["finalized"] == true {
        "settled, final".to_string()
    } else if waiting == 0 {
        "settled".to_string()
    } else {
        format!("waiting for {waiting} peer(s) to acknowledge")
    };
    let behind: Vec<String> = epoch["lag"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["behind"].as_u64().is_some_and(|b| b > 0))
        .map(|l| {
            let peer: String = show(&l["peer"]).chars().take(8).collect();
            match l["behind"].as_u64() {
                Some(b) if b > lattice_node::MAX_LAG_SHOWN => {
                    format!("{peer}… more than {}", lattice_node::MAX_LAG_SHOWN)
                }
                Some(b) => format!("{peer}… {b}"),
                None => String::new(),
            }
        })
        .collect();
    let lag = if behind.is_empty() {
        String::new()
    } else {
        format!("; epochs behind: {}", behind.join(", "))
    };
    format!(
        "{} ({}…), {settled}{lag}",
        epoch["number"],
        show(&epoch["hash"]).chars().take(8).collect::<String>()
    )
}

/// Bytes as text in binary units (`1.5 MiB`).
fn bytes_text(bytes: &Value) -> String {
    let n = bytes.as_u64().unwrap_or(0) as f64;
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn history_json(list: v1::IntentionList) -> Value {
    let items: Vec<Value> = list
        .items
        .into_iter()
        .map(|i| {
            json!({
                "seq": i.seq, "hash": i.hash, "author": i.author, "hlc": i.hlc,
                "deps": i.deps, "ops_bytes": i.ops_bytes, "partition": i.partition,
            })
        })
        .collect();
    json!({ "items": items })
}

fn rejected_json(list: v1::RejectedList) -> Value {
    let items: Vec<Value> = list
        .items
        .into_iter()
        .map(|r| {
            json!({
                "seq": r.seq, "hash": r.hash, "author": r.author, "hlc": r.hlc,
                "partition": r.partition, "reason": r.reason,
            })
        })
        .collect();
    json!({ "items": items })
}

fn peers_json(list: v1::PeerList) -> Value {
    let items: Vec<Value> = list
        .items
        .into_iter()
        .map(|p| {
            json!({
                "peer": p.key, "status": p.status,
                "name": (!p.name.is_empty()).then_some(p.name),
                "addrs": p.addrs, "me": p.me,
            })
        })
        .collect();
    json!({ "items": items })
}

fn modules_json(list: v1::ModuleList) -> Value {
    let items: Vec<Value> = list
        .items
        .into_iter()
        .map(|m| {
            json!({
                "module": m.module, "bytes": m.bytes,
                "builtin": (!m.builtin.is_empty()).then_some(m.builtin),
            })
        })
        .collect();
    json!({ "items": items })
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

async fn dispatch(cmd: ClientCommand, mut c: Client, out: &Output) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Node(NodeCommand::Id) => {
            let s = c.node.status(v1::Empty {}).await.map_err(err)?.into_inner();
            out.record(&format!("node {}", s.key), json!({"node": s.key}));
        }
        ClientCommand::Node(NodeCommand::Status) => {
            let s = c.node.status(v1::Empty {}).await.map_err(err)?.into_inner();
            let r = s.replication.unwrap_or_default();
            out.record(
                &format!(
                    "node     {}\nname     {}\naddress  {}\ndata     {}\nstores   {} open of {}\nsync     {} sessions opened, {} served, {} failed; {} intentions synced, {} gossiped ({} sent); {} bytes; {} gaps filled; {} bans",
                    s.key,
                    if s.name.is_empty() { "(unnamed: `lattice node set-name`)" } else { &s.name },
                    s.address,
                    s.data_dir,
                    s.open_stores,
                    s.stores,
                    r.sessions,
                    r.served,
                    r.failed_sessions,
                    r.synced_intentions,
                    r.gossiped_intentions,
                    r.gossip_sent,
                    r.session_bytes,
                    r.gaps_filled,
                    r.bans
                ),
                json!({"node": s.key, "name": s.name, "address": s.address, "data_dir": s.data_dir, "open_stores": s.open_stores, "stores": s.stores,
                    "replication": {"sessions": r.sessions, "served": r.served, "failed_sessions": r.failed_sessions,
                        "synced_intentions": r.synced_intentions, "session_bytes": r.session_bytes, "gossip_sent": r.gossip_sent,
                        "gossiped_intentions": r.gossiped_intentions, "gaps_filled": r.gaps_filled, "bans": r.bans}}),
            );
        }
        ClientCommand::Node(NodeCommand::SetName { name }) => {
            c.node
                .set_name(v1::SetNameRequest { name: name.clone() })
                .await
                .map_err(err)?;
            out.record(&format!("node name set to {name}"), json!({"name": name}));
        }
        ClientCommand::Node(NodeCommand::Repair) => {
            let list = c.store.list(v1::Empty {}).await.map_err(err)?.into_inner();
            let total = list.items.len();
            let damaged: Vec<v1::StoreRef> = list
                .items
                .into_iter()
                .filter(|r| !r.damage.is_empty())
                .collect();
            if damaged.is_empty() {
                out.record(
                    &format!("no damaged stores ({total} in the inventory)"),
                    json!({"repaired": []}),
                );
            }
            for r in damaged {
                out.progress(&format!(
                    "repairing {} ({}): {}",
                    short(&r.id),
                    r.name,
                    r.damage
                ));
                let report = parse(
                    c.store
                        .repair(v1::StoreRequest {
                            store: r.id.clone(),
                        })
                        .await
                        .map_err(err)?,
                )?;
                out.record(&format!("repaired {}", r.id), report);
            }
        }
        ClientCommand::Node(NodeCommand::Stop) => {
            let pid = c
                .node
                .status(v1::Empty {})
                .await
                .map_err(err)?
                .into_inner()
                .pid;
            c.node.shutdown(v1::Empty {}).await.map_err(err)?;
            if pid != 0 && pid != std::process::id() {
                out.progress("stopping the daemon…");
                wait_for_exit(pid).await?;
            }
            out.record("the daemon stopped", json!({"stopped": true, "pid": pid}));
        }
        ClientCommand::Module(cmd) => module(cmd, c, out).await?,
        ClientCommand::Cas(cmd) => crate::cas_cmd::run(cmd, c, out).await?,
        ClientCommand::Fs(cmd) => crate::fs_cmd::run(cmd, c, out).await?,
        ClientCommand::Store(cmd) => store(cmd, c, out).await?,
        ClientCommand::Kv {
            store,
            method,
            args,
        } => kv(&mut c, &store, method, args, out).await?,
    }
    Ok(())
}

async fn module(cmd: ModuleCommand, mut c: Client, out: &Output) -> anyhow::Result<()> {
    match cmd {
        ModuleCommand::Install { file } => {
            let len = std::fs::metadata(&file)
                .with_context(|| format!("reading {}", file.display()))?
                .len();
            if len > lattice_runtime::MAX_MODULE_BYTES as u64 {
                return Err(crate::output::CliError::new(
                    "module_too_large",
                    format!(
                        "{} is {len} bytes; the most a module may be is {} bytes (64 MiB)",
                        file.display(),
                        lattice_runtime::MAX_MODULE_BYTES
                    ),
                )
                .into());
            }
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let file_hash = blake3::hash(&bytes).to_hex().to_string();
            let v = parse(
                c.module
                    .install(v1::InstallRequest { module: bytes })
                    .await
                    .map_err(err)?,
            )?;
            // Store types are named by the component the node keeps: for a core module that
            // is the component made from it, not the file's own hash.
            let made = v["module"].as_str() != Some(file_hash.as_str());
            let d = &v["descriptor"];
            let mut record = v.clone();
            record["file_hash"] = json!(file_hash);
            record["componentized"] = json!(made);
            let note = if made {
                format!(
                    "; the file is a core module (its own hash {}…): stores of this type are named by the component made from it",
                    &file_hash[..16]
                )
            } else {
                String::new()
            };
            out.record(
                &format!(
                    "installed {} ({} {}); `lattice store create --type {}` uses this hash{note}",
                    show(&v["module"]),
                    show(&d["name"]),
                    show(&d["version"]),
                    show(&v["module"]),
                ),
                record,
            );
        }
        ModuleCommand::List => {
            let v = modules_json(c.module.list(v1::Empty {}).await.map_err(err)?.into_inner());
            for m in v["items"].as_array().into_iter().flatten() {
                out.record(
                    &format!(
                        "{}  {:>8} B  {}",
                        show(&m["module"]),
                        m["bytes"],
                        m["builtin"]
                            .as_str()
                            .map(|n| format!("built-in {n}"))
                            .unwrap_or_default()
                    ),
                    m.clone(),
                );
            }
        }
        ModuleCommand::Inspect { module } => {
            let v = parse(
                c.module
                    .inspect(v1::ModuleRequest { module })
                    .await
                    .map_err(err)?,
            )?;
            out.record(
                &describe_text(&v["descriptor"], &show(&v["module"])),
                v.clone(),
            );
        }
    }
    Ok(())
}

fn describe_text(d: &Value, module: &str) -> String {
    let mut text = format!(
        "{} {} — {}\nmodule {module}\nmethods:",
        show(&d["name"]),
        show(&d["version"]),
        show(&d["description"]),
    );
    for m in d["methods"].as_array().into_iter().flatten() {
        let params: Vec<String> = m["params"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let w = format!("{}=<{}>", show(&p["name"]), show(&p["kind"]));
                if p["optional"] == true {
                    format!("[{w}]")
                } else {
                    w
                }
            })
            .collect();
        text.push_str(&format!(
            "\n  {:<8} {} {}  — {}",
            show(&m["kind"]),
            show(&m["name"]),
            params.join(" "),
            show(&m["description"])
        ));
    }
    text
}

async fn join(c: &mut Client, token: String, out: &Output) -> anyhow::Result<()> {
    let mut stream = c
        .store
        .join(v1::JoinRequest { token })
        .await
        .map_err(err)?
        .into_inner();
    out.progress("contacting the inviter…");
    while let Some(item) = stream.next().await {
        let p = item.map_err(err)?;
        if p.done {
            let how = if p.snapshot_bytes > 0 {
                format!(
                    "from a snapshot of {} bytes holding {} intentions: the inviter pruned its history",
                    p.snapshot_bytes, p.fetched
                )
            } else {
                format!("{} intentions fetched", p.fetched)
            };
            out.record(
                &format!(
                    "joined store {} ({how}); its child stores open as they arrive",
                    p.store
                ),
                json!({"store": p.store, "fetched": p.fetched, "snapshot_bytes": p.snapshot_bytes}),
            );
            return Ok(());
        }
        out.progress(&format!("  fetched {} intentions…", p.fetched));
    }
    bail!(
        "the node stopped answering before the join finished; `lattice store list` shows whether it completed"
    )
}

async fn store(cmd: StoreCommand, mut c: Client, out: &Output) -> anyhow::Result<()> {
    let store_req = |store: String| v1::StoreRequest { store };
    match cmd {
        StoreCommand::Create {
            store_type,
            name,
            parent,
        } => {
            // A path is read here, so the daemon need not see this file.
            let store_type = if std::path::Path::new(&store_type).is_file() {
                let bytes =
                    std::fs::read(&store_type).with_context(|| format!("reading {store_type}"))?;
                let v = parse(
                    c.module
                        .install(v1::InstallRequest { module: bytes })
                        .await
                        .map_err(err)?,
                )?;
                show(&v["module"])
            } else {
                store_type
            };
            let r = c
                .store
                .create(v1::CreateRequest {
                    store_type,
                    name,
                    parent: parent.unwrap_or_default(),
                })
                .await
                .map_err(err)?
                .into_inner();
            out.record(
                &format!("created store {} (module {})", r.id, short(&r.module)),
                json!({"store": r.id, "name": r.name, "module": r.module, "parent": (!r.parent.is_empty()).then_some(&r.parent)}),
            );
        }
        StoreCommand::List => {
            let list = c.store.list(v1::Empty {}).await.map_err(err)?.into_inner();
            if list.items.is_empty() && !out.json() {
                out.record(
                    "no stores; create one with `lattice store create --type kv`",
                    json!({}),
                );
            }
            for r in list.items {
                out.record(
                    &format!(
                        "{}  {:<20} {:<8} module {}{}{}",
                        r.id,
                        r.name,
                        r.state,
                        short(&r.module),
                        if r.parent.is_empty() { String::new() } else { format!("  child of {}", short(&r.parent)) },
                        if r.damage.is_empty() { String::new() } else { format!("\n    {}; fix: lattice store repair {}", r.damage, short(&r.id)) }
                    ),
                    json!({"store": r.id, "name": r.name, "state": r.state, "module": r.module, "parent": (!r.parent.is_empty()).then_some(&r.parent), "damage": (!r.damage.is_empty()).then_some(&r.damage)}),
                );
            }
        }
        StoreCommand::Status { store } => {
            let s = status_json(
                c.store
                    .status(store_req(store))
                    .await
                    .map_err(err)?
                    .into_inner(),
            );
            let text = if s.get("witnessed").is_some() {
                format!(
                    "store      {}\nname       {}\nmodule     {}\nstate      {}\nwitnessed  {}\nprojected  {}\nfloating   {}\nrejected   {}\nepoch      {}\nlog        {}\nstate size {}",
                    show(&s["store"]),
                    show(&s["name"]),
                    show(&s["module"]),
                    show(&s["state"]),
                    s["witnessed"],
                    s["projected"],
                    s["floating"],
                    s["rejected"],
                    epoch_text(&s["epoch"]),
                    bytes_text(&s["log_bytes"]),
                    bytes_text(&s["state_bytes"])
                )
            } else if let Some(damage) = s["damage"].as_str() {
                format!(
                    "store {} is damaged and not served: {damage}\nfix: lattice store repair {}",
                    show(&s["store"]),
                    show(&s["store"])
                )
            } else {
                format!(
                    "store {} is {} (not open)",
                    show(&s["store"]),
                    show(&s["state"])
                )
            };
            out.record(&text, s);
        }
        StoreCommand::Inspect { store } => {
            let d = parse(c.store.inspect(store_req(store)).await.map_err(err)?)?;
            out.record(
                &format!(
                    "store  {}
{}",
                    show(&d["store"]),
                    describe_text(&d["descriptor"], &show(&d["module"]))
                ),
                d,
            );
        }
        StoreCommand::History { store, limit } => {
            let v = history_json(
                c.store
                    .history(v1::HistoryRequest { store, limit })
                    .await
                    .map_err(err)?
                    .into_inner(),
            );
            for i in v["items"].as_array().into_iter().flatten() {
                out.record(
                    &format!(
                        "{:>6}  {}  by {}  {}  {:<7} {} B, {} deps",
                        i["seq"],
                        short(i["hash"].as_str().unwrap_or("")),
                        short(i["author"].as_str().unwrap_or("")),
                        show(&i["hlc"]),
                        show(&i["partition"]),
                        i["ops_bytes"],
                        i["deps"].as_array().map_or(0, Vec::len)
                    ),
                    i.clone(),
                );
            }
        }
        StoreCommand::Rejected { store, limit } => {
            let v = rejected_json(
                c.store
                    .rejected(v1::HistoryRequest { store, limit })
                    .await
                    .map_err(err)?
                    .into_inner(),
            );
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() && !out.json() {
                out.record("no rejected intentions", Value::Null);
            }
            for i in items {
                out.record(
                    &format!(
                        "{:>6}  {}  by {}  {}  {:<6}  {}",
                        i["seq"],
                        short(i["hash"].as_str().unwrap_or("")),
                        short(i["author"].as_str().unwrap_or("")),
                        show(&i["hlc"]),
                        show(&i["partition"]),
                        show(&i["reason"]),
                    ),
                    i.clone(),
                );
            }
        }
        StoreCommand::Call {
            store,
            method,
            args,
            json_args,
        } => {
            let result = parse(
                c.store
                    .call(v1::CallRequest {
                        store,
                        method,
                        args_json: json_args.unwrap_or_default(),
                        words: args,
                    })
                    .await
                    .map_err(err)?,
            )?;
            out.record(&serde_json::to_string_pretty(&result)?, result);
        }
        StoreCommand::Watch { store } => {
            let mut stream = c
                .store
                .watch(store_req(store))
                .await
                .map_err(err)?
                .into_inner();
            out.progress("watching; Ctrl-C stops");
            loop {
                let next = tokio::select! {
                    n = stream.next() => n,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                let Some(item) = next else {
                    bail!("the node closed the stream");
                };
                let e = item.map_err(err)?;
                if e.lagged > 0 {
                    out.record(
                        &format!("(missed {} events: this watcher fell behind)", e.lagged),
                        json!({"lagged": e.lagged}),
                    );
                    continue;
                }
                let payload = String::from_utf8(e.payload.clone())
                    .unwrap_or_else(|_| format!("0x{}", hex::encode(&e.payload)));
                let json_payload: Value =
                    serde_json::from_str(&payload).unwrap_or(Value::String(payload.clone()));
                out.record(
                    &format!("{:>6} {:<8} {payload}", e.seq, e.topic),
                    json!({"seq": e.seq, "topic": e.topic, "payload": json_payload}),
                );
            }
        }
        StoreCommand::Invite { store, ttl } => {
            let r = c
                .store
                .invite(v1::InviteRequest {
                    store,
                    ttl_seconds: ttl,
                })
                .await
                .map_err(err)?
                .into_inner();
            out.record(
                &format!(
                    "{}\n(one-time; valid for {ttl} s; on the other node: lattice store join <token>)",
                    r.token
                ),
                json!({"token": r.token, "expires_ms": r.expires_ms}),
            );
        }
        StoreCommand::Join { token } | StoreCommand::Rejoin { token } => {
            join(&mut c, token, out).await?;
        }
        StoreCommand::RevokePeer { store, peer } => {
            let r = parse(
                c.store
                    .revoke_peer(v1::PeerRequest {
                        store,
                        peer: peer.clone(),
                    })
                    .await
                    .map_err(err)?,
            )?;
            let full = r["peer"].as_str().unwrap_or(&peer).to_string();
            out.record(
                &format!(
                    "revoked {}: its writes after the last one this node has seen are refused by every peer, in this store and its child stores; its sessions and gossip are refused from now on. Re-invite it (`lattice store invite`) to let it back.",
                    short(&full)
                ),
                r,
            );
        }
        StoreCommand::Peers { store } => {
            let v = peers_json(
                c.store
                    .peers(store_req(store))
                    .await
                    .map_err(err)?
                    .into_inner(),
            );
            for p in v["items"].as_array().into_iter().flatten() {
                out.record(
                    &format!(
                        "{}  {:<8} {}{}",
                        show(&p["peer"]),
                        show(&p["status"]),
                        p["name"].as_str().unwrap_or(""),
                        if p["me"] == true { "  (this node)" } else { "" }
                    ),
                    p.clone(),
                );
            }
        }
        StoreCommand::Archive { store } => archive(&mut c, store, true, out).await?,
        StoreCommand::Unarchive { store } => archive(&mut c, store, false, out).await?,
        StoreCommand::Leave { store } => {
            c.store.leave(store_req(store.clone())).await.map_err(err)?;
            out.record(
                &format!("left store {store}; its data is kept (`lattice store rejoin <token>` comes back)"),
                json!({"store": store, "state": "left"}),
            );
        }
        StoreCommand::Delete { store } => {
            c.store
                .delete(store_req(store.clone()))
                .await
                .map_err(err)?;
            out.record(
                &format!("deleted the local data of {store}"),
                json!({"store": store, "deleted": true}),
            );
        }
        StoreCommand::Headless { store, mode } => {
            let headless = mode == "on";
            c.store
                .set_headless(v1::HeadlessRequest {
                    store: store.clone(),
                    headless,
                })
                .await
                .map_err(err)?;
            let text = if headless {
                format!("{store} is headless here by choice: its module is neither fetched nor run")
            } else {
                format!("{store} runs its module here again (fetched from its peers if missing)")
            };
            out.record(
                &text,
                json!({"store": store, "headless_by_choice": headless}),
            );
        }
        StoreCommand::Repair { store } => {
            let r = parse(c.store.repair(store_req(store)).await.map_err(err)?)?;
            let log = match r["log_problem"].as_str() {
                None => "log verified and kept".to_string(),
                Some(problem) => format!(
                    "log rebuilt ({problem}): {} intentions kept, {} dropped; peers send the rest",
                    r["salvaged"], r["dropped"]
                ),
            };
            out.record(
                &format!(
                    "repaired {}: {log}; projected state rebuilt from the log",
                    show(&r["store"])
                ),
                r,
            );
        }
        StoreCommand::Prune { store, no_cut } => {
            let r = parse(
                c.store
                    .prune(v1::PruneRequest {
                        store,
                        cut: !no_cut,
                    })
                    .await
                    .map_err(err)?,
            )?;
            let text = match r["not_now"].as_str() {
                Some(why) => format!("nothing pruned in {}: {why}", show(&r["store"])),
                None => format!(
                    "pruned {} below epoch {}: {} of {} intentions looked at deleted ({} bytes) in {} ms; log now {} bytes",
                    show(&r["store"]),
                    r["epoch"],
                    r["deleted"],
                    r["scanned"],
                    r["bytes"],
                    r["took_ms"],
                    r["log_bytes"]
                ),
            };
            out.record(&text, r);
        }
        StoreCommand::PrunePolicy { store, mode, keep } => {
            let r = parse(
                c.store
                    .prune_policy(v1::PrunePolicyRequest {
                        store,
                        mode: mode.unwrap_or_default(),
                        keep,
                    })
                    .await
                    .map_err(err)?,
            )?;
            let policy = match (r["mode"].as_str(), r["keep"].as_u64()) {
                (Some("keep-epochs"), Some(n)) => {
                    format!("keeps the history of the newest {n} final epoch(s)")
                }
                (Some("keep-ms"), Some(n)) => format!("keeps {n} ms of history"),
                _ => "off: prunes only when asked (`lattice store prune`)".to_string(),
            };
            out.record(&format!("{}: prune policy {policy}", show(&r["store"])), r);
        }
        StoreCommand::Rebuild { .. } => bail!("rebuild runs without the daemon"),
    }
    Ok(())
}

async fn archive(
    c: &mut Client,
    store: String,
    archived: bool,
    out: &Output,
) -> anyhow::Result<()> {
    c.store
        .archive(v1::ArchiveRequest {
            store: store.clone(),
            archived,
        })
        .await
        .map_err(err)?;
    let state = if archived { "archived" } else { "active" };
    out.record(
        &format!("store {store} is {state} on every peer of its parent"),
        json!({"store": store, "state": state}),
    );
    Ok(())
}

async fn kv(
    c: &mut Client,
    store: &str,
    method: &str,
    args: Value,
    out: &Output,
) -> anyhow::Result<()> {
    let d = parse(
        c.store
            .inspect(v1::StoreRequest {
                store: store.to_string(),
            })
            .await
            .map_err(err)?,
    )?;
    let d = &d["descriptor"];
    if d["name"] != "kvstore" {
        bail!(
            "store {} is a {} store; `{method}` is a kvstore shortcut — use `lattice store call`",
            short(store),
            show(&d["name"])
        );
    }
    let args = match args {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    };
    let result = parse(
        c.store
            .call(v1::CallRequest {
                store: store.to_string(),
                method: method.to_string(),
                args_json: args.to_string(),
                words: Vec::new(),
            })
            .await
            .map_err(err)?,
    )?;
    let text = match method {
        "get" => match (&result["value"], result["conflicted"] == true) {
            (Value::Null, _) => "(not set)".to_string(),
            (v, conflicted) => format!(
                "{}{}",
                show(v),
                if conflicted {
                    "  (conflicted: `lattice inspect` shows every head)"
                } else {
                    ""
                }
            ),
        },
        "list" => result["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                format!(
                    "{} = {}{}",
                    show(&i["key"]),
                    show(&i["value"]),
                    if i["conflicted"] == true {
                        "  (conflicted)"
                    } else {
                        ""
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        "put" | "delete" => format!(
            "ok {} (seq {})",
            short(result["hash"].as_str().unwrap_or("")),
            result["seq"]
        ),
        _ => serde_json::to_string_pretty(&result)?,
    };
    out.record(&text, result);
    Ok(())
}
