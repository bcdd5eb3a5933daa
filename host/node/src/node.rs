//! [`Node`]: a data directory opened with its identity, inventory (`meta.db`) and Wasm
//! runtime; creates and opens stores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lattice_cas::Cas;
use lattice_log::file::FileError;
use lattice_log::{Clock, Incoming, Ingested, Log, LogConfig, build_genesis, system_now_ms};
use lattice_model::{Hash, NodeKey, PubKey, StoreId};
use lattice_runtime::{BUILTIN_MODULES, Limits, LoadedModule, ModuleHash, Runtime};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::data_dir::DataDir;
use crate::error::NodeError;
use crate::genesis::StoreGenesis;
use crate::meta::{MetaDb, StoreRecord, StoreState};
use crate::store::{Snapshot, Store, snapshot_refused};

/// An opened node. Holds `meta.db` open, so one process at a time owns a data directory.
#[derive(Debug)]
pub struct Node {
    dir: DataDir,
    key: NodeKey,
    runtime: Runtime,
    meta: MetaDb,
    system_module: ModuleHash,
    cas: Option<Arc<Cas>>,
    /// The wall clock its logs date intentions by.
    clock: Clock,
    /// Whether store actors and logs run on the caller's thread (see [`Node::inline`]).
    inline: bool,
    /// Where random secrets come from when not the system (see [`Node::with_entropy`]).
    entropy: Option<Arc<std::sync::Mutex<Entropy>>>,
}

/// The one store among `ids` whose id starts with `text` (case and surrounding spaces
/// ignored).
///
/// # Errors
/// [`NodeError::UnknownStore`] for none, [`NodeError::Ambiguous`] for several.
pub(crate) fn match_store_prefix(ids: Vec<StoreId>, text: &str) -> Result<StoreId, NodeError> {
    let text = text.trim().to_ascii_lowercase();
    let matches: Vec<StoreId> = ids
        .into_iter()
        .filter(|id| !text.is_empty() && id.to_string().starts_with(&text))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(NodeError::UnknownStore(text)),
        _ => Err(NodeError::Ambiguous(text)),
    }
}

/// Installs built-in component bytes unless they are installed already (installing compiles);
/// returns the module hash.
fn ensure_installed(runtime: &Runtime, bytes: &[u8]) -> Result<ModuleHash, NodeError> {
    let hash = ModuleHash::of(bytes);
    if runtime.is_installed(&hash) {
        return Ok(hash);
    }
    Ok(runtime.install(bytes)?.hash())
}

/// Installs a built-in module by name unless it is installed already; returns its hash.
fn ensure_builtin(runtime: &Runtime, name: &str) -> Result<ModuleHash, NodeError> {
    let Some((_, bytes)) = BUILTIN_MODULES.iter().find(|(n, _)| *n == name) else {
        return Err(NodeError::UnknownType(name.to_string()));
    };
    ensure_installed(runtime, bytes)
}

/// What [`Node::repair_store`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Why the log was rebuilt (`None`: it opened and verified, and was kept).
    pub log_problem: Option<String>,
    /// Intentions read back from the damaged log and accepted again.
    pub salvaged: u64,
    /// Intentions read back but refused (damaged, or missing what they depend on).
    pub dropped: u64,
    /// Both projections were set aside to be projected again from the log.
    pub projections_rebuilt: bool,
}

/// A store as listed by [`Node::list_stores`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSummary {
    /// Its id.
    pub id: StoreId,
    /// From its genesis, when the genesis is here.
    pub genesis: Option<StoreGenesis>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Moves `path` to `<path>.damaged` (replacing an older one); a missing file is fine.
fn set_aside(path: &Path) -> Result<(), NodeError> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".damaged");
    match std::fs::rename(path, &aside) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Opens the blob store in `dir`; a damaged index is set aside (its blobs are fetched again
/// from peers as stores need them). A blob store that cannot be opened at all leaves the
/// node without blobs rather than down.
fn open_cas(dir: &Path) -> Option<Arc<Cas>> {
    match Cas::open(dir) {
        Ok(cas) => return Some(Arc::new(cas)),
        Err(e @ lattice_cas::CasError::Index(_)) => {
            warn!(
                "the blob index in {} is damaged ({e}); set aside as cas.db.damaged",
                dir.display()
            );
            if let Err(e) = set_aside(&dir.join("cas.db")) {
                warn!("could not set the blob index aside: {e}");
            }
        }
        Err(e) => warn!("the blob store in {} cannot be opened: {e}", dir.display()),
    }
    match Cas::open(dir) {
        Ok(cas) => Some(Arc::new(cas)),
        Err(e) => {
            tracing::error!("running without a blob store: {e}");
            None
        }
    }
}

/// A seeded source of secrets: each draw hashes the seed with the draw's number.
#[derive(Debug)]
struct Entropy {
    seed: u64,
    drawn: u64,
}

impl Node {
    /// Opens the data directory (creating it and the identity on first use).
    ///
    /// # Errors
    /// [`NodeError`] when the identity or module directory cannot be set up.
    pub fn open(dir: DataDir) -> Result<Node, NodeError> {
        Node::open_with(dir, Limits::default())
    }

    /// This node with its logs dating intentions by `clock` instead of the system clock
    /// (simulations skew nodes' clocks; HLCs keep causal order whatever the skew).
    pub fn with_clock(mut self, clock: Clock) -> Node {
        self.clock = clock;
        self
    }

    /// This node with every store's log and actor run on the calling thread, and its
    /// blocking work run in place rather than on tokio's blocking pool: with a
    /// single-threaded runtime nothing then happens concurrently, so a simulation run is
    /// a function of its inputs. A daemon keeps the default (threads).
    pub fn inline(mut self) -> Node {
        self.inline = true;
        self
    }

    /// This node drawing its random secrets (invite tokens) from `seed` instead of the
    /// system: a simulation replays them. Never for a real node: its invites would be
    /// guessable.
    pub fn with_entropy(mut self, seed: u64) -> Node {
        self.entropy = Some(Arc::new(std::sync::Mutex::new(Entropy { seed, drawn: 0 })));
        self
    }

    /// 32 random bytes: from the system, or from the seed of [`Node::with_entropy`].
    ///
    /// # Errors
    /// [`NodeError::Randomness`] when the system has no randomness to give.
    pub fn random_secret(&self) -> Result<[u8; 32], NodeError> {
        let mut secret = [0u8; 32];
        match &self.entropy {
            Some(entropy) => {
                let mut e = entropy.lock().unwrap_or_else(|p| p.into_inner());
                e.drawn += 1;
                let mut hasher = blake3::Hasher::new_derive_key("lattice node entropy");
                hasher.update(&e.seed.to_le_bytes());
                hasher.update(&e.drawn.to_le_bytes());
                secret = *hasher.finalize().as_bytes();
            }
            None => {
                getrandom::fill(&mut secret).map_err(|e| NodeError::Randomness(e.to_string()))?
            }
        }
        Ok(secret)
    }

    /// The wall clock this node's logs date intentions by.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Whether this node runs its stores inline (see [`Node::inline`]).
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    /// The log settings of this node's stores.
    fn log_config(&self) -> LogConfig {
        LogConfig {
            clock: self.clock.clone(),
            inline: self.inline,
            ..LogConfig::default()
        }
    }

    /// Opens with explicit guest limits.
    ///
    /// # Errors
    /// As [`Node::open`].
    pub fn open_with(dir: DataDir, limits: Limits) -> Result<Node, NodeError> {
        let key = dir.load_or_create_identity()?;
        let meta_path = dir.meta_path();
        let meta = match MetaDb::open(&meta_path) {
            Ok(meta) => meta,
            // Only damaged bytes are set aside; I/O failures and locks are reported as they are.
            Err(
                e @ NodeError::Runtime(lattice_runtime::Error::File(FileError::Damaged { .. })),
            ) => {
                warn!(
                    "the node inventory {} is damaged ({e}); set aside as meta.db.damaged, rebuilding it from {}",
                    meta_path.display(),
                    dir.stores_dir().display()
                );
                set_aside(&meta_path)?;
                MetaDb::open(&meta_path)?
            }
            Err(e) => return Err(e),
        };
        let cas = open_cas(&dir.cas_dir());
        let mut runtime = Runtime::new(&dir.modules_dir(), limits)?;
        if let Some(cas) = &cas {
            runtime = runtime.with_blobs(cas.clone());
        }
        let system_module = ensure_builtin(&runtime, "system")?;
        let node = Node {
            dir,
            key,
            runtime,
            meta,
            system_module,
            clock: Clock::system(),
            inline: false,
            entropy: None,
            cas,
        };
        sweep_removals(&node.dir.stores_dir())?;
        let recovered = node.recover_inventory()?;
        if !recovered.is_empty() {
            warn!(
                "{} stores were on disk but not in the inventory; added them back",
                recovered.len()
            );
        }
        Ok(node)
    }

    /// Adds an inventory record for every store directory that has none (an inventory lost,
    /// emptied or set aside as damaged): name and module from its genesis, active, as a root
    /// store (a child is re-attached to its parent when the parent opens and lists it). Only
    /// unrecorded stores are read, so an ordinary start costs one directory listing.
    ///
    /// # Errors
    /// When the store directory cannot be listed or the inventory written.
    pub fn recover_inventory(&self) -> Result<Vec<StoreId>, NodeError> {
        let known: std::collections::HashSet<StoreId> =
            self.meta.list()?.into_iter().map(|r| r.id).collect();
        let mut recovered = Vec::new();
        for id in self.store_ids()? {
            if known.contains(&id) {
                continue;
            }
            // A damaged log still gets its record: the store is then reported damaged.
            let genesis = if self.dir.log_path(&id).exists() {
                self.read_genesis(id).ok().flatten()
            } else {
                None
            };
            let record = StoreRecord {
                id,
                parent: None,
                module: genesis.as_ref().map_or(ModuleHash([0; 32]), |g| g.module),
                name: genesis.map_or_else(|| "(recovered)".to_string(), |g| g.name),
                state: StoreState::Active,
            };
            self.meta.put(&record)?;
            recovered.push(id);
        }
        Ok(recovered)
    }

    /// The genesis of store `id` read from its log (`None` while it has not arrived).
    fn read_genesis(&self, id: StoreId) -> Result<Option<StoreGenesis>, NodeError> {
        let log = self.open_log(id)?;
        let genesis = log
            .reader()
            .get(&Hash(id.0))?
            .and_then(|g| StoreGenesis::decode(g.intention().ops()));
        log.close()?;
        Ok(genesis)
    }

    /// The inventory.
    pub fn meta(&self) -> &MetaDb {
        &self.meta
    }

    /// The node's name (empty until set).
    ///
    /// # Errors
    /// [`NodeError::Meta`].
    pub fn name(&self) -> Result<String, NodeError> {
        Ok(self.meta.setting("name")?.unwrap_or_default())
    }

    /// Sets the node's name (recorded as this peer's name in stores it writes to later).
    ///
    /// # Errors
    /// [`NodeError::Meta`].
    pub fn set_name(&self, name: &str) -> Result<(), NodeError> {
        self.meta.set_setting("name", name)
    }

    /// The node's key.
    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    /// The data directory.
    pub fn dir(&self) -> &DataDir {
        &self.dir
    }

    /// The Wasm runtime (module store).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The node's blob store (`None` when it could not be opened: the node runs without
    /// blobs, and says why in its log).
    pub fn cas(&self) -> Option<&Arc<Cas>> {
        self.cas.as_ref()
    }

    /// Installs module bytes (a component, or a core module made into one).
    ///
    /// # Errors
    /// [`NodeError::Module`] naming why the bytes are refused.
    pub fn install_module(&self, bytes: &[u8]) -> Result<LoadedModule, NodeError> {
        Ok(self.runtime.install(bytes)?)
    }

    /// Resolves a `--type`: a path to a `.wasm` file (installed), a built-in type name
    /// (`kvstore`/`kv`, `counter`, optionally with `.wasm`), or a module hash (which need not be
    /// installed: the store is then headless until it is).
    ///
    /// # Errors
    /// [`NodeError::UnknownType`] when it is none of these; module errors for bad files.
    pub fn resolve_type(&self, spec: &str) -> Result<ModuleHash, NodeError> {
        let path = Path::new(spec);
        if path.is_file() {
            let bytes = std::fs::read(path).map_err(io(path))?;
            return Ok(self.runtime.install(&bytes)?.hash());
        }
        let name = spec.strip_suffix(".wasm").unwrap_or(spec);
        let name = if name == "kv" { "kvstore" } else { name };
        if BUILTIN_MODULES.iter().any(|(n, _)| *n == name) {
            return ensure_builtin(&self.runtime, name);
        }
        if let Some(hash) = ModuleHash::from_hex(spec) {
            return Ok(hash);
        }
        let installed: Vec<ModuleHash> = self
            .runtime
            .list()?
            .into_iter()
            .map(|(h, _)| h)
            .filter(|h| h.to_string().starts_with(&spec.to_ascii_lowercase()))
            .collect();
        match installed.as_slice() {
            [one] if spec.len() >= 4 => Ok(*one),
            _ => Err(NodeError::UnknownType(spec.to_string())),
        }
    }

    /// Creates a root store running `module`; see [`Node::create_child`].
    ///
    /// # Errors
    /// [`NodeError`] on storage or module failures.
    pub fn create_store(&self, module: ModuleHash, name: &str) -> Result<Store, NodeError> {
        self.create_child(module, name, None)
    }

    /// Creates a store running `module`: authors its genesis (which records the module hash;
    /// the store id is the genesis hash), then its first system entries in one intention —
    /// name, peer strategy (independent for a root, inherited from `parent` for a child),
    /// and this node as an active, named peer — and records it in the inventory. Declaring a
    /// child in its parent's system table is the caller's (it holds the parent open).
    ///
    /// # Errors
    /// [`NodeError`] on storage or module failures.
    pub fn create_child(
        &self,
        module: ModuleHash,
        name: &str,
        parent: Option<StoreId>,
    ) -> Result<Store, NodeError> {
        let name: String = name.chars().take(64).collect();
        let genesis = StoreGenesis {
            module,
            name: name.clone(),
        };
        // The store id is the genesis' hash: two stores of one type and name created by
        // this node in the same millisecond would be one. A later millisecond is taken
        // while the id is one this node has a replica of.
        let mut now_ms = self.clock.now_ms();
        let (signed, id) = loop {
            let signed = build_genesis(&self.key, genesis.encode(), now_ms)?;
            let id = StoreId::from(signed.hash());
            if !self.dir.store_dir(&id).exists() {
                break (signed, id);
            }
            now_ms += 1;
        };
        let log = self.open_log(id)?;
        for r in log.ingest(vec![Incoming::new(signed.as_bytes().to_vec())])? {
            r.map_err(|_| NodeError::BadGenesis(id))?;
        }
        let mut store = self.store_from_log(id, Arc::new(log))?;
        let me = self.key.public().to_string();
        let strategy = match parent {
            Some(p) => json!({"strategy": "inherited", "parent": p.to_string()}),
            None => json!({"strategy": "independent"}),
        };
        let mut ops = vec![
            json!({"method": "set-name", "args": {"name": name}}),
            json!({"method": "set-strategy", "args": strategy}),
            json!({"method": "set-peer-status", "args": {"peer": me, "status": "active"}}),
        ];
        let node_name = self.name()?;
        if !node_name.is_empty() {
            ops.push(json!({"method": "set-peer-name", "args": {"peer": me, "name": node_name}}));
        }
        store.system_call("batch", &json!({ "ops": ops }))?;
        self.meta.put(&StoreRecord {
            id,
            parent,
            module,
            name,
            state: StoreState::Active,
        })?;
        Ok(store)
    }

    /// Ingests intentions of store `id` received from elsewhere (creating the local replica
    /// when it does not exist yet). Open it with [`Node::open_store`] once its genesis is here.
    ///
    /// # Errors
    /// [`NodeError`] on storage failures; per-intention refusals are in the results.
    pub fn ingest_replica(
        &self,
        id: StoreId,
        items: Vec<Incoming>,
    ) -> Result<lattice_log::IngestResults, NodeError> {
        let log = self.open_log(id)?;
        let results = log.ingest(items)?;
        log.close()?;
        Ok(results)
    }

    /// Opens (creating the store directory if needed) the log of store `id`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn open_log(&self, id: StoreId) -> Result<Log, NodeError> {
        let dir = self.dir.store_dir(&id);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Log::open(
            &self.dir.log_path(&id),
            id,
            self.key.clone(),
            self.log_config(),
        )?)
    }

    /// A store of a built-in type never waits for its module: installs it from the binary
    /// when the log's genesis names one that is not installed. Returns the genesis.
    fn install_builtin_for(
        &self,
        id: StoreId,
        log: &Log,
    ) -> Result<Option<StoreGenesis>, NodeError> {
        let genesis = log
            .reader()
            .get(&Hash(id.0))?
            .and_then(|g| StoreGenesis::decode(g.intention().ops()));
        if let Some(genesis) = &genesis
            && !self.runtime.is_installed(&genesis.module)
            && let Some((_, bytes)) = BUILTIN_MODULES
                .iter()
                .find(|(_, b)| ModuleHash::of(b) == genesis.module)
        {
            ensure_installed(&self.runtime, bytes)?;
        }
        Ok(genesis)
    }

    /// Joins a store from a member's [`Snapshot`] instead of its history: roots the log on
    /// the member's floor, makes the snapshot the state at its epoch, opens the store (the
    /// tail projected on top) and checks the state at the epoch hashes to what the members
    /// signed. Nothing is kept when any step fails. The caller records the store in the
    /// inventory as for any join.
    ///
    /// # Errors
    /// [`NodeError::SnapshotRefused`] when the store is here already, an intention cannot
    /// stand on the floor, the store type is not installed or the hash differs; storage and
    /// module failures.
    pub fn store_from_snapshot(&self, snapshot: &Snapshot) -> Result<Store, NodeError> {
        let id = snapshot.store;
        let dir = self.dir.store_dir(&id);
        let marker = joining_marker(&dir);
        if self.dir.log_path(&id).exists() {
            if !marker.exists() {
                return Err(snapshot_refused(id, "the store is here already"));
            }
            // An earlier join from a snapshot was interrupted: start again from nothing.
            self.remove_store_files(&id)?;
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        durable_write(&marker, b"a join from a snapshot is under way\n").map_err(io(&marker))?;
        let opened = (|| {
            let log = Arc::new(self.open_log(id)?);
            // The genesis comes first among the held intentions: rooted alone, it names the
            // store type, which must be installed before the state is loaded.
            let first = snapshot.held.iter().take(1).cloned().collect();
            for r in log.root(&snapshot.floor, first)? {
                r.map_err(|e| snapshot_refused(id, e.to_string()))?;
            }
            let genesis = self.install_builtin_for(id, &log)?;
            let genesis = genesis.ok_or(NodeError::BadGenesis(id))?;
            crate::store::install_snapshot(
                &log,
                snapshot,
                &self.runtime,
                &self.dir.epoch_state_path(&id),
                genesis.module,
            )?;
            let mut store = self.store_from_log(id, log)?;
            store.check_snapshot(&snapshot.epoch)?;
            std::fs::remove_file(&marker).map_err(io(&marker))?;
            sync_dir(&dir).map_err(io(&dir))?;
            Ok(store)
        })();
        if opened.is_err()
            && let Err(e) = discard_dir(&dir)
        {
            warn!(path = %dir.display(), "could not remove a refused snapshot's files: {e}");
        }
        opened
    }

    /// Catches store `id` (here, not open) up through a snapshot of a member that pruned
    /// history this node never had: sets its files aside, joins from the snapshot as a new
    /// node would ([`Node::store_from_snapshot`]), then takes over every intention only the
    /// old log had above the member's floor (this node's writes it never sent, and whatever
    /// else the member lacks) and lets the old files go. Returns the store and how many
    /// intentions were taken over.
    ///
    /// Interrupted, the next open of the store finishes the take-over, or returns to the old
    /// files when the new store was not whole yet ([`Node::open_store`]).
    ///
    /// # Errors
    /// As [`Node::store_from_snapshot`] (the old files are put back); storage failures.
    pub fn rebase_on_snapshot(&self, snapshot: &Snapshot) -> Result<(Store, u64), NodeError> {
        let id = snapshot.store;
        let (dir, aside) = (self.dir.store_dir(&id), self.dir.behind_dir(&id));
        if aside.exists() {
            return Err(snapshot_refused(
                id,
                "an earlier catch-up of this store is unfinished; open it first",
            ));
        }
        std::fs::rename(&dir, &aside).map_err(io(&dir))?;
        let stores = self.dir.stores_dir();
        sync_dir(&stores).map_err(io(&stores))?;
        let mut store = match self.store_from_snapshot(snapshot) {
            Ok(store) => store,
            Err(e) => {
                std::fs::rename(&aside, &dir).map_err(io(&aside))?;
                sync_dir(&stores).map_err(io(&stores))?;
                return Err(e);
            }
        };
        let taken = self.take_over(&aside, store.log())?;
        store.project()?;
        discard_dir(&aside)?;
        Ok((store, taken))
    }

    /// Settles a catch-up through a snapshot that was interrupted: back to the old files
    /// when the new store is not whole, otherwise the take-over is finished.
    pub(crate) fn settle_rebase(&self, id: StoreId) -> Result<(), NodeError> {
        let aside = self.dir.behind_dir(&id);
        if !aside.exists() {
            return Ok(());
        }
        let dir = self.dir.store_dir(&id);
        if !self.dir.log_path(&id).exists() || joining_marker(&dir).exists() {
            self.remove_store_files(&id)?;
            std::fs::rename(&aside, &dir).map_err(io(&aside))?;
            let stores = self.dir.stores_dir();
            sync_dir(&stores).map_err(io(&stores))?;
            info!(store = %id.short(), "an interrupted catch-up was undone; the store catches up again");
            return Ok(());
        }
        let log = self.open_log(id)?;
        let taken = self.take_over(&aside, &log)?;
        log.close()?;
        discard_dir(&aside)?;
        info!(store = %id.short(), taken, "an interrupted catch-up was finished");
        Ok(())
    }

    /// Ingests into `log` (rooted on a member's floor) every intention the log in `aside`
    /// holds at or above that floor, in its witness order; returns how many were new.
    fn take_over(&self, aside: &Path, log: &Log) -> Result<u64, NodeError> {
        let id = log.store_id();
        let floor: HashMap<PubKey, u64> = log
            .reader()
            .prune_floor()?
            .into_iter()
            .map(|(author, at, _)| (author, at))
            .collect();
        let old = Log::open(
            &aside.join("log.db"),
            id,
            self.key.clone(),
            self.log_config(),
        )?;
        let reader = old.reader();
        let mut taken = 0;
        let mut from = 1;
        loop {
            let batch = reader.witnessed(from, 2048)?;
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            let mut items = Vec::new();
            for (_, signed) in &batch {
                let intention = signed.intention();
                let below = reader.dag_info(&signed.hash())?.is_some_and(|info| {
                    floor
                        .get(&intention.author())
                        .is_some_and(|at| info.author_seq < *at)
                });
                if !below {
                    items.push(Incoming::new(signed.as_bytes().to_vec()));
                }
            }
            for result in log.ingest(items)? {
                match result {
                    Ok(Ingested::Witnessed { .. } | Ingested::Floating { .. }) => taken += 1,
                    Ok(_) => {}
                    Err(e) => debug!(store = %id.short(), "not taken over: {e}"),
                }
            }
            from = last + 1;
        }
        old.close()?;
        Ok(taken)
    }

    /// Removes every file of store `id` here (nothing happens when there are none). The
    /// store must not be open.
    ///
    /// # Errors
    /// [`NodeError::Io`].
    pub fn remove_store_files(&self, id: &StoreId) -> Result<(), NodeError> {
        discard_dir(&self.dir.store_dir(id))
    }

    /// Whether this node keeps store `id` headless by choice ([`Node::set_headless_by_choice`]).
    ///
    /// # Errors
    /// When the inventory cannot be read.
    pub fn is_headless_by_choice(&self, id: &StoreId) -> Result<bool, NodeError> {
        Ok(self.meta.setting(&headless_key(id))?.as_deref() == Some("on"))
    }

    /// Keeps store `id` headless by choice (`on`), or lets it run its module again: a
    /// headless store replicates its log and system table but never fetches nor runs its
    /// module, so it serves no reads of its data. Takes effect when the store next opens.
    ///
    /// # Errors
    /// When the inventory cannot be written.
    pub fn set_headless_by_choice(&self, id: &StoreId, on: bool) -> Result<(), NodeError> {
        self.meta
            .set_setting(&headless_key(id), if on { "on" } else { "off" })
    }

    /// Finds a store by full id or unique prefix.
    ///
    /// # Errors
    /// [`NodeError::UnknownStore`] or [`NodeError::Ambiguous`].
    pub fn find_store(&self, text: &str) -> Result<StoreId, NodeError> {
        match_store_prefix(self.store_ids()?, text)
    }

    fn store_ids(&self) -> Result<Vec<StoreId>, NodeError> {
        let dir = self.dir.stores_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            if let Ok(id) = StoreId::from_hex(&entry.file_name().to_string_lossy()) {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Lists the stores in this data directory.
    ///
    /// # Errors
    /// [`NodeError`] when a store's log cannot be read.
    pub fn list_stores(&self) -> Result<Vec<StoreSummary>, NodeError> {
        let mut out = Vec::new();
        for id in self.store_ids()? {
            let genesis = self.read_genesis(id)?;
            out.push(StoreSummary { id, genesis });
        }
        Ok(out)
    }

    /// Opens a store: its log, its runtime (headless when its module is missing), and projects
    /// whatever is not projected yet.
    ///
    /// # Errors
    /// [`NodeError`] on storage failures or a missing genesis.
    pub fn open_store(&self, id: StoreId) -> Result<Store, NodeError> {
        self.settle_rebase(id)?;
        if !self.dir.log_path(&id).exists() {
            return Err(NodeError::UnknownStore(id.to_string()));
        }
        if joining_marker(&self.dir.store_dir(&id)).exists() {
            return Err(snapshot_refused(
                id,
                "joining it from a snapshot was interrupted; offer the snapshot again",
            ));
        }
        let log = self.open_log(id)?;
        self.store_from_log(id, Arc::new(log))
    }

    /// Opens a store on an already open log (its genesis must be there): both projections,
    /// caught up.
    ///
    /// # Errors
    /// [`NodeError::BadGenesis`] without a genesis; storage and module failures.
    pub fn store_from_log(&self, id: StoreId, log: Arc<Log>) -> Result<Store, NodeError> {
        self.install_builtin_for(id, &log)?;
        let headless_by_choice = self.is_headless_by_choice(&id)?;
        // Projected state can always be rebuilt from the log: a damaged partition is set
        // aside and projected again (at most once per partition).
        let mut attempts = 0;
        loop {
            // Each partition's open contains its own file's panics; one from elsewhere is
            // not pinned on a file, and both partitions are rebuilt.
            let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Store::open(
                    &self.runtime,
                    &self.dir,
                    id,
                    log.clone(),
                    self.key.public(),
                    self.system_module,
                    headless_by_choice,
                )
            }))
            .unwrap_or_else(|payload| {
                Err(NodeError::Runtime(lattice_runtime::Error::Corrupt(
                    format!(
                        "opening the store panicked: {}",
                        lattice_log::file::panic_text(payload.as_ref())
                    ),
                )))
            });
            let damaged = match &opened {
                Err(e) if attempts < 2 => self.damaged_projections(&id, e),
                _ => Vec::new(),
            };
            let Err(e) = &opened else { return opened };
            if damaged.is_empty() {
                return opened;
            }
            attempts += 1;
            for path in &damaged {
                set_aside(path)?;
            }
            warn!(
                store = %id.short(),
                "{damaged:?} damaged ({e}); rebuilding from the log"
            );
        }
    }

    /// The projection files (state.db, system.db) that `err` says are damaged: the one named,
    /// or both when a partition does not match the log or opening panicked elsewhere.
    fn damaged_projections(&self, id: &StoreId, err: &NodeError) -> Vec<PathBuf> {
        use lattice_runtime::Error as RtError;
        let state = self.dir.state_path(id);
        let system = self.dir.system_path(id);
        match err {
            NodeError::Runtime(RtError::File(FileError::Damaged { path, .. })) => [state, system]
                .into_iter()
                .filter(|p| p.display().to_string() == *path)
                .collect(),
            NodeError::Runtime(RtError::Corrupt(_)) => vec![state, system],
            _ => Vec::new(),
        }
    }

    /// Repairs store `id`'s files (it must not be open): a log that does not open, or whose
    /// witness chain does not verify, is set aside as `log.db.damaged` and rebuilt from the
    /// intentions that can still be read from it (each one verified again on ingest; the
    /// store's peers send the rest once it is open); both projections are set aside and are
    /// projected again from the log when the store next opens.
    ///
    /// # Errors
    /// [`NodeError::UnknownStore`] when there is no such store here; file system failures.
    pub fn repair_store(&self, id: StoreId) -> Result<RepairReport, NodeError> {
        let path = self.dir.log_path(&id);
        if !self.dir.store_dir(&id).exists() {
            return Err(NodeError::UnknownStore(id.to_string()));
        }
        let mut report = RepairReport::default();
        let problem = if !path.exists() {
            Some(format!("{} is missing", path.display()))
        } else {
            // Checked from scratch: whatever the clean mark says.
            let _ = std::fs::remove_file(lattice_log::file::clean_mark_path(&path));
            self.log_problem(id)?
        };
        if let Some(problem) = problem {
            report.log_problem = Some(problem);
            let salvaged = if path.exists() {
                lattice_log::file::salvage(&path, id)?
            } else {
                Vec::new()
            };
            // The new log is built beside the old one and swapped in only when complete: a
            // crash part-way leaves the damaged log in place for the next repair.
            let fresh = self.dir.store_dir(&id).join("log.db.rebuilding");
            let _ = std::fs::remove_file(&fresh);
            let log = Log::open(&fresh, id, self.key.clone(), self.log_config())?;
            let found = salvaged.len() as u64;
            let results = log.ingest(
                salvaged
                    .into_iter()
                    .map(|s| Incoming::new(s.as_bytes().to_vec()))
                    .collect(),
            )?;
            log.close()?;
            let kept = results.iter().filter(|r| r.is_ok()).count() as u64;
            report.salvaged = kept;
            report.dropped = found - kept;
            if path.exists() {
                let aside = self
                    .dir
                    .store_dir(&id)
                    .join(format!("log.db.damaged-{}", system_now_ms()));
                std::fs::rename(&path, &aside).map_err(io(&path))?;
            }
            let _ = std::fs::remove_file(lattice_log::file::clean_mark_path(&path));
            std::fs::rename(&fresh, &path).map_err(io(&fresh))?;
            let _ = std::fs::rename(
                lattice_log::file::clean_mark_path(&fresh),
                lattice_log::file::clean_mark_path(&path),
            );
        }
        self.discard_projections(&id)?;
        report.projections_rebuilt = true;
        Ok(report)
    }

    /// What is wrong with store `id`'s log (`None`: it opens and its witness chain verifies).
    fn log_problem(&self, id: StoreId) -> Result<Option<String>, NodeError> {
        Ok(match self.open_log(id) {
            Ok(log) => {
                let verified = lattice_log::file::contain(&self.dir.log_path(&id), || {
                    log.reader()
                        .verify(|_, _| {})
                        .map_err(|e| FileError::Damaged {
                            path: self.dir.log_path(&id).display().to_string(),
                            reason: e.to_string(),
                        })
                });
                let closed = log.close();
                match (verified, closed) {
                    (Ok(_), Ok(())) => None,
                    (Err(e), _) => Some(e.to_string()),
                    (Ok(_), Err(e)) => Some(e.to_string()),
                }
            }
            Err(NodeError::LogOpen(lattice_log::OpenError::AlreadyOpen { path })) => {
                return Err(NodeError::LogOpen(lattice_log::OpenError::AlreadyOpen {
                    path,
                }));
            }
            Err(e) => Some(e.to_string()),
        })
    }

    /// Sets both projections of store `id` aside (to `*.damaged`), so the next open projects
    /// them again from the log.
    ///
    /// # Errors
    /// When a file cannot be moved.
    pub fn discard_projections(&self, id: &StoreId) -> Result<(), NodeError> {
        for p in [self.dir.state_path(id), self.dir.system_path(id)] {
            set_aside(&p)?;
        }
        Ok(())
    }
}

/// The file present in a store's directory while it is being joined from a snapshot: a store
/// with it is incomplete (an interrupted join), never opened, and replaced by the next join.
fn joining_marker(store_dir: &std::path::Path) -> PathBuf {
    store_dir.join("joining")
}

/// Writes `bytes` to `path` and makes the file and its directory entry durable.
fn durable_write(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// The inventory setting that keeps a store headless by choice.
fn headless_key(id: &StoreId) -> String {
    format!("headless/{id}")
}

/// The suffix of a directory being removed ([`discard_dir`]); swept at the next start.
const REMOVING: &str = ".removing";

/// Removes directory `dir` so that a crash part-way leaves either all of it or none under
/// its name: it is renamed to `<dir>.removing` (durably) before its files go, and what a
/// crash leaves under that name is swept by [`sweep_removals`]. Nothing to remove is fine.
fn discard_dir(dir: &Path) -> Result<(), NodeError> {
    let mut doomed = dir.as_os_str().to_owned();
    doomed.push(REMOVING);
    let doomed = PathBuf::from(doomed);
    match std::fs::remove_dir_all(&doomed) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&doomed)(e)),
        _ => {}
    }
    match std::fs::rename(dir, &doomed) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other.map_err(io(dir))?,
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent).map_err(io(parent))?;
    }
    std::fs::remove_dir_all(&doomed).map_err(io(&doomed))
}

/// Finishes removals a crash interrupted: every `*.removing` directory in `dir`.
fn sweep_removals(dir: &Path) -> Result<(), NodeError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if path.to_string_lossy().ends_with(REMOVING) {
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Makes the entries of `dir` durable (created or removed files).
fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
