//! The local API (`lattice.daemon.v1`, see `proto/lattice.proto`): the gRPC services a
//! running node serves on its Unix socket, and the client side the CLI uses.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lattice_model::StoreId;
use lattice_node::{NodeError, StoreManager, StoreRecord};
use lattice_proto::v1::{
    self, blob_service_client::BlobServiceClient, blob_service_server,
    fs_service_client::FsServiceClient, fs_service_server,
    module_service_client::ModuleServiceClient, module_service_server,
    node_service_client::NodeServiceClient, node_service_server,
    store_service_client::StoreServiceClient, store_service_server,
};
use lattice_runtime::{BUILTIN_MODULES, ModuleHash, StoreRuntime};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// The socket's file name inside the data directory.
pub(crate) const SOCKET: &str = "lattice.sock";
/// Events a `Watch` stream buffers for a slow client before it reports lag.
const WATCH_QUEUE: usize = 256;

/// The gRPC metadata key that carries an error's stable machine-readable code (see
/// `docs/api.md`).
pub(crate) const CODE_KEY: &str = "lattice-code";

/// A gRPC status with its stable code attached.
pub(crate) fn coded(code: tonic::Code, stable: &'static str, text: String) -> Status {
    let mut status = Status::new(code, text);
    status.metadata_mut().insert(
        CODE_KEY,
        tonic::metadata::MetadataValue::from_static(stable),
    );
    status
}

pub(crate) fn status_of(e: NodeError) -> Status {
    use tonic::Code;
    let text = e.to_string();
    let (code, stable) = match &e {
        NodeError::Rejected { kind, .. } => {
            let code = match kind {
                lattice_node::RejectKind::Guest => Code::FailedPrecondition,
                _ => Code::PermissionDenied,
            };
            (code, kind.code())
        }
        NodeError::UnknownStore(_) | NodeError::NotOpen(_) => (Code::NotFound, "not_found"),
        NodeError::NotAPeer(_) => (Code::NotFound, "not_a_peer"),
        NodeError::PrunedStateMissing(_) => (Code::FailedPrecondition, "pruned_state_missing"),
        NodeError::SnapshotRefused { .. } => (Code::FailedPrecondition, "snapshot_refused"),
        NodeError::RevokeSelf => (Code::InvalidArgument, "revoke_self"),
        NodeError::Ambiguous(_) => (Code::InvalidArgument, "ambiguous"),
        NodeError::Token(_) => (Code::InvalidArgument, "bad_token"),
        NodeError::UnknownType(_) | NodeError::Module(_) => (Code::InvalidArgument, "bad_module"),
        NodeError::NotAChild(_) | NodeError::InheritedPeers(_) => {
            (Code::InvalidArgument, "invalid_argument")
        }
        NodeError::Runtime(lattice_runtime::Error::BadArguments(_))
        | NodeError::Runtime(lattice_runtime::Error::Call(_)) => {
            (Code::InvalidArgument, "invalid_argument")
        }
        NodeError::Runtime(lattice_runtime::Error::Headless(_)) => {
            (Code::FailedPrecondition, "headless")
        }
        NodeError::JoinRefused(_) => (Code::PermissionDenied, "join_refused"),
        NodeError::InviteExpired => (Code::FailedPrecondition, "invite_expired"),
        NodeError::StillOpen(_) => (Code::FailedPrecondition, "still_open"),
        NodeError::NotReady(_) => (Code::Unavailable, "not_ready"),
        NodeError::Damaged { .. } => (Code::DataLoss, "damaged"),
        NodeError::AlreadyMember(_) => (Code::AlreadyExists, "already_member"),
        NodeError::Blob(lattice_cas::CasError::NotFound { .. }) => (Code::NotFound, "not_found"),
        NodeError::Blob(lattice_cas::CasError::OutOfRange { .. }) => {
            (Code::OutOfRange, "out_of_range")
        }
        NodeError::Blob(lattice_cas::CasError::Damaged { .. }) => (Code::DataLoss, "damaged"),
        NodeError::Blob(lattice_cas::CasError::Busy { .. }) => (Code::Unavailable, "busy"),
        NodeError::BlobUnavailable { .. } => (Code::Unavailable, "blob_unavailable"),
        NodeError::Net(_)
        | NodeError::Replica(_)
        | NodeError::InviterUnreachable { .. }
        | NodeError::Bootstrap(_) => (Code::Unavailable, "network"),
        _ => (Code::Internal, "internal"),
    };
    coded(code, stable, text)
}

fn reply(value: Value) -> Result<Response<v1::JsonReply>, Status> {
    Ok(Response::new(v1::JsonReply {
        json: value.to_string(),
    }))
}

fn store_ref(r: &StoreRecord) -> v1::StoreRef {
    v1::StoreRef {
        id: r.id.to_string(),
        name: r.name.clone(),
        module: r.module.to_string(),
        parent: r.parent.map(|p| p.to_string()).unwrap_or_default(),
        state: r.state.as_str().to_string(),
        damage: String::new(),
    }
}

/// Describes a module by instantiating it against a scratch state.
pub(crate) fn describe_module(
    runtime: &lattice_runtime::Runtime,
    hash: ModuleHash,
) -> anyhow::Result<Value> {
    let scratch = tempfile::tempdir()?;
    let mut rt = StoreRuntime::open(
        runtime,
        &scratch.path().join("state.db"),
        StoreId([0xEE; 32]),
        hash,
    )?;
    Ok(rt.describe()?.to_json())
}

/// The services, over one running node.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    manager: StoreManager,
    mounts: Arc<lattice_fs::Mounts>,
    stop: Arc<Notify>,
    /// Set to true when the server stops: open streams end with a final status.
    ending: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Api {
    pub(crate) fn manager(&self) -> &StoreManager {
        &self.manager
    }

    /// The API of `manager`'s node (call within its runtime: mounts run their node work
    /// there).
    pub(crate) fn new(manager: StoreManager, stop: Arc<Notify>) -> Api {
        let (ending, _) = tokio::sync::watch::channel(false);
        let mounts = lattice_fs::Mounts::new(
            manager.clone(),
            tokio::runtime::Handle::current(),
            manager.node().dir().root(),
        );
        Api {
            mounts: Arc::new(mounts),
            manager,
            stop,
            ending: Arc::new(ending),
        }
    }

    /// The node's mounts.
    pub(crate) fn mounts(&self) -> &Arc<lattice_fs::Mounts> {
        &self.mounts
    }

    /// Unmounts every mount (the node is stopping).
    pub(crate) async fn unmount_all(&self) {
        let mounts = self.mounts.clone();
        let _ = tokio::task::spawn_blocking(move || mounts.unmount_all()).await;
    }

    /// Ends every open stream (watches) with a final `unavailable` status, so a graceful
    /// server shutdown does not wait on clients that never hang up.
    pub(crate) fn end_streams(&self) {
        self.ending.send_replace(true);
    }

    pub(crate) fn find(&self, text: &str) -> Result<StoreId, Status> {
        self.manager.find(text).map_err(status_of)
    }

    /// Builds the JSON arguments of a call from `args_json` or `name=value` words.
    async fn call_args(&self, id: &StoreId, req: &v1::CallRequest) -> Result<Value, Status> {
        if !req.args_json.trim().is_empty() {
            let value: Value = serde_json::from_str(&req.args_json)
                .map_err(|e| Status::invalid_argument(format!("arguments are not JSON: {e}")))?;
            return Ok(value);
        }
        let descriptor = self.manager.describe(id).await.map_err(status_of)?;
        let info = descriptor.method(&req.method).ok_or_else(|| {
            let names: Vec<&str> = descriptor.methods.iter().map(|m| m.name.as_str()).collect();
            Status::invalid_argument(format!(
                "{} has no method `{}`; it offers: {}",
                descriptor.name,
                req.method,
                names.join(", ")
            ))
        })?;
        let mut map = Map::new();
        for word in &req.words {
            let (name, raw) = word.split_once('=').ok_or_else(|| {
                Status::invalid_argument(format!(
                    "argument `{word}` is not name=value; usage: {}",
                    info.usage()
                ))
            })?;
            let param = info.params.iter().find(|p| p.name == name).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "unknown argument `{name}`; usage: {}",
                    info.usage()
                ))
            })?;
            let v = param
                .kind
                .parse_word(raw)
                .map_err(|e| Status::invalid_argument(format!("argument `{name}`: {e}")))?;
            map.insert(name.to_string(), v);
        }
        Ok(Value::Object(map))
    }
}

/// A replicator's counters as the API gives them.
fn replication_stats(r: lattice_net::ReplicaStats) -> v1::ReplicationStats {
    v1::ReplicationStats {
        sessions: r.sessions,
        served: r.served,
        failed_sessions: r.failed_sessions,
        synced_intentions: r.synced_intentions,
        session_bytes: r.session_bytes,
        gossip_sent: r.gossip_sent,
        gossiped_intentions: r.gossiped_intentions,
        gaps_filled: r.gaps_filled,
        bans: r.bans,
    }
}

pub(crate) type Stream<T> =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl node_service_server::NodeService for Api {
    async fn status(&self, _: Request<v1::Empty>) -> Result<Response<v1::NodeStatus>, Status> {
        let node = self.manager.node();
        let records = self.manager.list().map_err(status_of)?;
        Ok(Response::new(v1::NodeStatus {
            key: node.key().public().to_string(),
            name: node.name().map_err(status_of)?,
            address: self.manager.address().to_string(),
            data_dir: node.dir().root().display().to_string(),
            open_stores: records
                .iter()
                .filter(|r| r.state == lattice_node::StoreState::Active)
                .count() as u32,
            stores: records.len() as u32,
            pid: std::process::id(),
            replication: Some(replication_stats(self.manager.replicator().stats())),
        }))
    }

    async fn set_name(
        &self,
        req: Request<v1::SetNameRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let name = req.into_inner().name;
        if name.len() > 64 {
            return Err(Status::invalid_argument("a node name is at most 64 bytes"));
        }
        self.manager.node().set_name(&name).map_err(status_of)?;
        // Tell the peers of every root store this node is active in.
        let me = self.manager.node().key().public().to_string();
        for r in self.manager.list().map_err(status_of)? {
            if r.parent.is_none() && r.state == lattice_node::StoreState::Active {
                let result = self
                    .manager
                    .system_call(&r.id, "set-peer-name", &json!({"peer": me, "name": name}))
                    .await;
                if let Err(e) = result {
                    warn!(store = %r.id.short(), "could not publish the node name: {e}");
                }
            }
        }
        Ok(Response::new(v1::Empty {}))
    }

    async fn shutdown(&self, _: Request<v1::Empty>) -> Result<Response<v1::Empty>, Status> {
        self.stop.notify_one();
        Ok(Response::new(v1::Empty {}))
    }
}

impl Api {
    /// The status of a store this node does not serve: closed (archived, left, unknown) or,
    /// with `damage`, quarantined.
    /// The store's record in the node's inventory (`meta.db`), if it has one.
    fn record(&self, id: &StoreId) -> Result<Option<lattice_node::StoreRecord>, Status> {
        self.manager.node().meta().get(id).map_err(status_of)
    }

    fn unserved_status(
        &self,
        id: &StoreId,
        damage: Option<String>,
    ) -> Result<Response<v1::StoreStatus>, Status> {
        let record = self.record(id)?;
        let state = match (&damage, &record) {
            (Some(_), _) => "damaged",
            (None, Some(r)) => r.state.as_str(),
            (None, None) => "unknown",
        };
        Ok(Response::new(v1::StoreStatus {
            store: id.to_string(),
            name: record.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
            module: record
                .as_ref()
                .map(|r| r.module.to_string())
                .unwrap_or_default(),
            state: state.to_string(),
            damage: damage.unwrap_or_default(),
            ..v1::StoreStatus::default()
        }))
    }
}

#[tonic::async_trait]
impl store_service_server::StoreService for Api {
    async fn create(
        &self,
        req: Request<v1::CreateRequest>,
    ) -> Result<Response<v1::StoreRef>, Status> {
        let req = req.into_inner();
        let parent = if req.parent.is_empty() {
            None
        } else {
            Some(self.find(&req.parent)?)
        };
        let id = self
            .manager
            .create(&req.store_type, &req.name, parent)
            .await
            .map_err(status_of)?;
        let record = self
            .record(&id)?
            .ok_or_else(|| Status::internal("the new store is not in the inventory"))?;
        Ok(Response::new(store_ref(&record)))
    }

    async fn list(&self, _: Request<v1::Empty>) -> Result<Response<v1::StoreList>, Status> {
        let items = self
            .manager
            .list()
            .map_err(status_of)?
            .iter()
            .map(|r| {
                let mut item = store_ref(r);
                if let Some(reason) = self.manager.damage(&r.id) {
                    item.state = "damaged".into();
                    item.damage = reason;
                }
                item
            })
            .collect();
        Ok(Response::new(v1::StoreList { items }))
    }

    async fn status(
        &self,
        req: Request<v1::StoreRequest>,
    ) -> Result<Response<v1::StoreStatus>, Status> {
        let id = self.find(&req.into_inner().store)?;
        match self.manager.status(&id).await {
            Ok(s) => Ok(Response::new(v1::StoreStatus {
                store: s.id.to_string(),
                name: s.name.clone(),
                module: s.module.clone(),
                state: s.state(),
                open: true,
                headless: s.headless,
                headless_by_choice: s.headless_by_choice,
                witnessed: s.witnessed,
                projected: s.projected,
                floating: s.floating,
                rejected: s.rejected,
                damage: String::new(),
                epoch: s.epoch.as_ref().map(|e| v1::EpochInfo {
                    number: e.number,
                    hash: e.hash.to_string(),
                    waiting: e.waiting.iter().map(ToString::to_string).collect(),
                    settled: e.settled(),
                    state: e.state.map(|h| h.to_string()).unwrap_or_default(),
                    finalized: e.finalized,
                    disagreeing: e.disagreeing.iter().map(ToString::to_string).collect(),
                    lag: s
                        .lag
                        .iter()
                        .map(|l| v1::PeerLag {
                            peer: l.peer.to_string(),
                            behind: l.behind,
                        })
                        .collect(),
                }),
                log_bytes: s.log_bytes,
                state_bytes: s.state_bytes,
            })),
            Err(NodeError::Damaged { reason, .. }) => self.unserved_status(&id, Some(reason)),
            Err(NodeError::NotOpen(_)) => self.unserved_status(&id, None),
            Err(e) => Err(status_of(e)),
        }
    }

    async fn inspect(
        &self,
        req: Request<v1::StoreRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        let id = self.find(&req.into_inner().store)?;
        let descriptor = self.manager.describe(&id).await.map_err(status_of)?;
        // The inventory names the module; a full status (epochs, lag, sizes) is not needed.
        let record = self
            .record(&id)?
            .ok_or_else(|| status_of(NodeError::NotOpen(id.to_string())))?;
        reply(json!({
            "store": id.to_string(),
            "module": record.module.to_string(),
            "descriptor": descriptor.to_json(),
        }))
    }

    async fn history(
        &self,
        req: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::IntentionList>, Status> {
        let req = req.into_inner();
        let id = self.find(&req.store)?;
        let limit = if req.limit == 0 { 20 } else { req.limit } as usize;
        let items = self
            .manager
            .history(&id, limit)
            .await
            .map_err(status_of)?
            .into_iter()
            .map(|i| v1::IntentionInfo {
                seq: i.seq,
                hash: i.hash.to_string(),
                author: i.author.to_string(),
                hlc: i.hlc.to_string(),
                deps: i.deps.iter().map(ToString::to_string).collect(),
                ops_bytes: i.ops_bytes as u64,
                partition: i.partition.to_string(),
            })
            .collect();
        Ok(Response::new(v1::IntentionList { items }))
    }

    async fn rejected(
        &self,
        req: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::RejectedList>, Status> {
        let req = req.into_inner();
        let id = self.find(&req.store)?;
        let limit = if req.limit == 0 { 50 } else { req.limit } as usize;
        let items = self
            .manager
            .rejected(&id, limit)
            .await
            .map_err(status_of)?
            .into_iter()
            .map(|r| v1::RejectedIntention {
                seq: r.seq,
                hash: r.hash.to_string(),
                author: r.author.to_string(),
                hlc: r.hlc.to_string(),
                partition: match r.partition {
                    lattice_runtime::Partition::Data => "data",
                    lattice_runtime::Partition::System => "system",
                }
                .to_string(),
                reason: r.reason,
            })
            .collect();
        Ok(Response::new(v1::RejectedList { items }))
    }

    async fn call(&self, req: Request<v1::CallRequest>) -> Result<Response<v1::JsonReply>, Status> {
        let req = req.into_inner();
        let id = self.find(&req.store)?;
        let args = self.call_args(&id, &req).await?;
        let result = self
            .manager
            .call(&id, &req.method, &args)
            .await
            .map_err(status_of)?;
        reply(result)
    }

    type WatchStream = Stream<v1::WatchEvent>;

    async fn watch(
        &self,
        req: Request<v1::StoreRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = self.find(&req.into_inner().store)?;
        let mut events = self.manager.watch(&id).map_err(status_of)?;
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let mut ending = self.ending.subscribe();
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    r = events.recv() => Some(r),
                    _ = ending.wait_for(|end| *end) => None,
                };
                let Some(received) = received else {
                    let stopping = coded(
                        tonic::Code::Unavailable,
                        "stopping",
                        "the daemon is stopping; watch again once it runs".into(),
                    );
                    let _ = tx.send(Err(stopping)).await;
                    return;
                };
                let item = match received {
                    Ok(e) => v1::WatchEvent {
                        seq: e.seq,
                        topic: e.topic,
                        payload: e.payload,
                        lagged: 0,
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => v1::WatchEvent {
                        lagged: n,
                        ..v1::WatchEvent::default()
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        let _ = tx
                            .send(Err(Status::unavailable("the store was closed")))
                            .await;
                        return;
                    }
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn invite(
        &self,
        req: Request<v1::InviteRequest>,
    ) -> Result<Response<v1::InviteReply>, Status> {
        let req = req.into_inner();
        let id = self.find(&req.store)?;
        let ttl = if req.ttl_seconds == 0 {
            86_400
        } else {
            req.ttl_seconds
        };
        let token = self
            .manager
            .invite(&id, Duration::from_secs(ttl))
            .await
            .map_err(status_of)?;
        Ok(Response::new(v1::InviteReply {
            token: token.encode(),
            expires_ms: token.expires_ms,
        }))
    }

    async fn set_headless(
        &self,
        req: Request<v1::HeadlessRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let req = req.into_inner();
        let id = self.find(&req.store)?;
        self.manager
            .set_headless(&id, req.headless)
            .await
            .map_err(status_of)?;
        Ok(Response::new(v1::Empty {}))
    }

    type JoinStream = Stream<v1::JoinProgress>;

    async fn join(
        &self,
        req: Request<v1::JoinRequest>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let token = req.into_inner().token;
        let (tx, rx) = mpsc::channel(64);
        let manager = self.manager.clone();
        tokio::spawn(async move {
            let progress = tx.clone();
            let mut last = 0u64;
            let result = manager
                .join(&token, move |fetched| {
                    if fetched >= last + 1000 || fetched < last {
                        last = fetched;
                        let _ = progress.try_send(Ok(v1::JoinProgress {
                            fetched,
                            ..v1::JoinProgress::default()
                        }));
                    }
                })
                .await;
            let last = match result {
                Ok(joined) => Ok(v1::JoinProgress {
                    fetched: joined.fetched,
                    store: joined.store.to_string(),
                    done: true,
                    snapshot_bytes: joined.snapshot_bytes,
                }),
                Err(e) => Err(status_of(e)),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn revoke_peer(
        &self,
        req: Request<v1::PeerRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        let req = req.into_inner();
        let id = self.find(&req.store)?;
        let peer = self
            .manager
            .find_peer(&id, &req.peer)
            .await
            .map_err(status_of)?;
        let mut result = self
            .manager
            .revoke_peer(&id, &peer)
            .await
            .map_err(status_of)?;
        result["peer"] = json!(peer.to_string());
        reply(result)
    }

    async fn peers(
        &self,
        req: Request<v1::StoreRequest>,
    ) -> Result<Response<v1::PeerList>, Status> {
        let id = self.find(&req.into_inner().store)?;
        let me = self.manager.node().key().public();
        let items = self
            .manager
            .peers(&id)
            .await
            .map_err(status_of)?
            .into_iter()
            .map(|p| v1::Peer {
                key: p.key.to_string(),
                status: p.status.as_str().to_string(),
                name: p.name.unwrap_or_default(),
                addrs: p.addrs,
                me: p.key == me,
            })
            .collect();
        Ok(Response::new(v1::PeerList { items }))
    }

    async fn archive(
        &self,
        req: Request<v1::ArchiveRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let req = req.into_inner();
        let id = self.find(&req.store)?;
        self.manager
            .archive(&id, req.archived)
            .await
            .map_err(status_of)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn leave(&self, req: Request<v1::StoreRequest>) -> Result<Response<v1::Empty>, Status> {
        let id = self.find(&req.into_inner().store)?;
        self.manager.leave(&id).await.map_err(status_of)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn delete(&self, req: Request<v1::StoreRequest>) -> Result<Response<v1::Empty>, Status> {
        let id = self.find(&req.into_inner().store)?;
        self.manager.delete(&id).map_err(status_of)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn repair(
        &self,
        req: Request<v1::StoreRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        let id = self.find(&req.into_inner().store)?;
        let report = self.manager.repair(&id).await.map_err(status_of)?;
        reply(repair_json(&id, &report))
    }

    async fn prune(
        &self,
        req: Request<v1::PruneRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        let req = req.into_inner();
        let id = self.find(&req.store)?;
        let report = self.manager.prune(&id, req.cut).await.map_err(status_of)?;
        let status = self.manager.status(&id).await.map_err(status_of)?;
        let mut out = report.to_json();
        out["store"] = json!(id.to_string());
        out["log_bytes"] = json!(status.log_bytes);
        reply(out)
    }

    async fn prune_policy(
        &self,
        req: Request<v1::PrunePolicyRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        let req = req.into_inner();
        let id = self.find(&req.store)?;
        let set = (!req.mode.is_empty()).then_some((req.mode, req.keep));
        let mut out = self
            .manager
            .prune_policy(&id, set)
            .await
            .map_err(status_of)?;
        out["store"] = json!(id.to_string());
        reply(out)
    }

    async fn verify_log(
        &self,
        req: Request<v1::StoreRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        let id = self.find(&req.into_inner().store)?;
        let report = self.manager.verify_log(&id).await.map_err(status_of)?;
        reply(json!({
            "store": id.to_string(),
            "records": report.records,
            "attestations": report.attestations,
            "intentions": report.intentions,
        }))
    }
}

/// The JSON `StoreService.Repair` answers with.
fn repair_json(id: &StoreId, report: &lattice_node::RepairReport) -> Value {
    json!({
        "store": id.to_string(),
        "log_problem": report.log_problem,
        "salvaged": report.salvaged,
        "dropped": report.dropped,
        "projections_rebuilt": report.projections_rebuilt,
    })
}

#[tonic::async_trait]
impl module_service_server::ModuleService for Api {
    async fn install(
        &self,
        req: Request<v1::InstallRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        let bytes = req.into_inner().module;
        let module = self
            .manager
            .install_module(bytes)
            .await
            .map_err(status_of)?;
        let manager = self.manager.clone();
        let descriptor =
            tokio::task::spawn_blocking(move || describe_module(manager.node().runtime(), module))
                .await
                .map_err(|e| Status::internal(format!("describing the module failed: {e}")))?
                .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        reply(json!({"module": module.to_string(), "descriptor": descriptor}))
    }

    async fn list(&self, _: Request<v1::Empty>) -> Result<Response<v1::ModuleList>, Status> {
        let builtin: Vec<(ModuleHash, &str)> = BUILTIN_MODULES
            .iter()
            .map(|(n, b)| (ModuleHash::of(b), *n))
            .collect();
        let list = self
            .manager
            .node()
            .runtime()
            .list()
            .map_err(|e| Status::internal(e.to_string()))?;
        let items = list
            .into_iter()
            .map(|(hash, size)| v1::ModuleInfo {
                module: hash.to_string(),
                bytes: size,
                builtin: builtin
                    .iter()
                    .find(|(h, _)| *h == hash)
                    .map(|(_, n)| n.to_string())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(v1::ModuleList { items }))
    }

    async fn inspect(
        &self,
        req: Request<v1::ModuleRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        let node = self.manager.node();
        let hash = node
            .resolve_type(&req.into_inner().module)
            .map_err(status_of)?;
        let descriptor = describe_module(node.runtime(), hash)
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        reply(json!({"module": hash.to_string(), "descriptor": descriptor}))
    }
}

/// Creates the API socket at `path` with mode 0600 (a stale file is replaced: the caller
/// holds the data directory's lock, so no live daemon owns it).
///
/// # Errors
/// When the socket cannot be created.
pub(crate) fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    match std::fs::remove_file(path) {
        Ok(()) => info!(path = %path.display(), "removed a stale API socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::anyhow!(
                "removing the old socket {}: {e}",
                path.display()
            ));
        }
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("creating the API socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The largest store-service request (a call's JSON arguments: a 1 MiB value, escaped).
pub(crate) const MAX_CALL_MESSAGE: usize = 16 << 20;
/// The largest module-service request: a module of [`lattice_runtime::MAX_MODULE_BYTES`] and
/// its framing.
pub(crate) const MAX_INSTALL_MESSAGE: usize = lattice_runtime::MAX_MODULE_BYTES + (64 << 10);

/// Serves the API on `listener` until `stop` is notified, then removes the socket file.
///
/// # Errors
/// When serving fails.
pub(crate) async fn serve_on(
    api: Api,
    listener: tokio::net::UnixListener,
    stop: Arc<Notify>,
) -> anyhow::Result<()> {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(node_service_server::NodeServiceServer::new(api.clone()))
        .add_service(
            store_service_server::StoreServiceServer::new(api.clone())
                .max_decoding_message_size(MAX_CALL_MESSAGE),
        )
        .add_service(
            module_service_server::ModuleServiceServer::new(api.clone())
                .max_decoding_message_size(MAX_INSTALL_MESSAGE),
        )
        .add_service(
            blob_service_server::BlobServiceServer::new(api.clone())
                .max_decoding_message_size(crate::api_blobs::MAX_BLOB_MESSAGE),
        )
        .add_service(fs_service_server::FsServiceServer::new(api))
        .serve_with_incoming_shutdown(incoming, async move { stop.notified().await })
        .await?;
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// A client of a node's API.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) node: NodeServiceClient<tonic::transport::Channel>,
    pub(crate) store: StoreServiceClient<tonic::transport::Channel>,
    pub(crate) module: ModuleServiceClient<tonic::transport::Channel>,
    pub(crate) blob: BlobServiceClient<tonic::transport::Channel>,
    pub(crate) fs: FsServiceClient<tonic::transport::Channel>,
}

impl Client {
    /// Connects to the socket at `path`; `None` when nothing answers there.
    pub(crate) async fn connect(path: &Path) -> Option<Client> {
        if !path.exists() {
            return None;
        }
        let path: PathBuf = path.to_path_buf();
        let channel = tonic::transport::Endpoint::from_static("http://lattice.local")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .ok()?;
        Some(Client {
            node: NodeServiceClient::new(channel.clone()),
            store: StoreServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_CALL_MESSAGE),
            module: ModuleServiceClient::new(channel.clone()),
            blob: BlobServiceClient::new(channel.clone())
                .max_decoding_message_size(crate::api_blobs::MAX_BLOB_MESSAGE),
            fs: FsServiceClient::new(channel),
        })
    }
}
