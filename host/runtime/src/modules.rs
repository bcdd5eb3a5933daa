//! The engine and the module store: components by BLAKE3 hash, with compiled code cached on
//! disk so a restart does not recompile.
//!
//! Layout under the module directory:
//! `<hash>.wasm` (the component bytes) and `cache/<hash>-<engine key>.cwasm` (compiled code,
//! invalidated when the wasmtime version or engine configuration changes).

use std::fmt;
use std::hash::{Hash as _, Hasher as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, info};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::{Store as StoreWorld, StorePre};
use crate::error::ModuleError;
use crate::host::HostState;

/// The largest module (component or core module) that installs: 64 MiB.
pub const MAX_MODULE_BYTES: usize = 64 << 20;

/// The BLAKE3 hash of a component's bytes: how stores name their type.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ModuleHash(pub [u8; 32]);

impl ModuleHash {
    /// Hashes component bytes.
    pub fn of(bytes: &[u8]) -> ModuleHash {
        ModuleHash(*blake3::hash(bytes).as_bytes())
    }
    /// The first 8 hex characters.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Option<ModuleHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut out).ok()?;
        Some(ModuleHash(out))
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleHash({})", self.short())
    }
}

/// Guest instances that can exist at once (two per open store serve prepare and query, plus
/// one per apply in progress).
pub(crate) const POOL_INSTANCES: u32 = 1000;

/// Limits applied to every guest call.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Fuel (roughly, Wasm instructions) per `apply` (default 200 million).
    pub apply_fuel: u64,
    /// Fuel per `describe`, `prepare` or `query` (default 2 billion).
    pub call_fuel: u64,
    /// Linear memory per instance in bytes (default 64 MiB).
    pub memory_bytes: usize,
    /// Largest query result or prepared ops in bytes (default 16 MiB).
    pub max_result_bytes: usize,
    /// Most bytes one `apply` may write (default 64 MiB).
    pub max_apply_write_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            apply_fuel: 200_000_000,
            call_fuel: 2_000_000_000,
            memory_bytes: 64 << 20,
            max_result_bytes: 16 << 20,
            max_apply_write_bytes: 64 << 20,
        }
    }
}

/// A loaded, type-checked module ready to instantiate.
#[derive(Clone)]
pub struct LoadedModule {
    pub(crate) hash: ModuleHash,
    pub(crate) pre: StorePre<HostState>,
}

impl fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LoadedModule({})", self.hash.short())
    }
}

impl LoadedModule {
    /// The module's hash.
    pub fn hash(&self) -> ModuleHash {
        self.hash
    }
}

/// The wasmtime engine, the host linker and the module directory. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) engine: Engine,
    linker: Arc<Linker<HostState>>,
    dir: PathBuf,
    engine_key: String,
    pub(crate) limits: Limits,
    /// The node's blob store, reached by guests through `lattice:store/blobs`.
    pub(crate) blobs: Option<Arc<lattice_cas::Cas>>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Runtime({})", self.dir.display())
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModuleError + '_ {
    move |source| ModuleError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Runtime {
    /// Creates the engine (deterministic configuration: fuel, NaN canonicalisation, no WASI)
    /// and the module directory.
    ///
    /// # Errors
    /// [`ModuleError::Io`] when the directory cannot be created; [`ModuleError::Invalid`]
    /// when the engine cannot be configured.
    pub fn new(dir: &Path, limits: Limits) -> Result<Runtime, ModuleError> {
        std::fs::create_dir_all(dir.join("cache")).map_err(io(dir))?;
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .cranelift_nan_canonicalization(true)
            .max_wasm_stack(1 << 20);
        // Every apply runs on a fresh instance: a pool of pre-reserved slots with
        // copy-on-write memory images keeps instantiating to microseconds.
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 4)
            .total_memories(POOL_INSTANCES)
            .total_tables(POOL_INSTANCES * 4)
            .max_memories_per_module(1)
            .max_tables_per_module(4)
            .table_elements(100_000)
            .max_memory_size(limits.memory_bytes)
            .linear_memory_keep_resident(64 << 10)
            .table_keep_resident(64 << 10);
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .memory_reservation(limits.memory_bytes as u64)
            .memory_guard_size(2 << 20)
            .memory_init_cow(true);
        let engine = Engine::new(&config).map_err(|e| ModuleError::Invalid(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        StoreWorld::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| ModuleError::Invalid(e.to_string()))?;
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{}-{:016x}", env!("CARGO_PKG_VERSION"), hasher.finish());
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            dir: dir.to_path_buf(),
            engine_key,
            limits,
            blobs: None,
        })
    }

    /// Gives guests the node's blob store (each reaches only its own store's blobs); without
    /// one, blob calls trap.
    #[must_use]
    pub fn with_blobs(mut self, cas: Arc<lattice_cas::Cas>) -> Runtime {
        self.blobs = Some(cas);
        self
    }

    /// The node's blob store, when guests were given one ([`Runtime::with_blobs`]).
    pub fn blobs(&self) -> Option<&Arc<lattice_cas::Cas>> {
        self.blobs.as_ref()
    }

    /// The limits guest calls run with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn module_path(&self, hash: &ModuleHash) -> PathBuf {
        self.dir.join(format!("{hash}.wasm"))
    }

    fn cache_path(&self, hash: &ModuleHash) -> PathBuf {
        self.dir
            .join("cache")
            .join(format!("{hash}-{}.cwasm", self.engine_key))
    }

    /// Turns install input into component bytes: a component as is, a core module carrying
    /// wit-bindgen's component-type section through `wit-component`.
    fn componentize(bytes: &[u8]) -> Result<Vec<u8>, ModuleError> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(ModuleError::Malformed("missing the \\0asm header".into()));
        }
        // Byte 4..8: version (core 1) and layer (component 1).
        let layer = u16::from_le_bytes([bytes[6], bytes[7]]);
        if layer == 1 {
            return Ok(bytes.to_vec());
        }
        // wit-component panics on some malformed metadata: such bytes are refused like any
        // other that cannot be made a component.
        let encoded = std::panic::catch_unwind(|| {
            wit_component::ComponentEncoder::default()
                .module(bytes)
                .and_then(|e| e.validate(true).encode())
        });
        match encoded {
            Ok(result) => result.map_err(|e| ModuleError::NotComponentizable(format!("{e:#}"))),
            Err(payload) => Err(ModuleError::NotComponentizable(format!(
                "its component-type metadata is malformed ({})",
                lattice_log::file::panic_text(payload.as_ref())
            ))),
        }
    }

    /// Compiles and type-checks component bytes against the store world.
    fn check(&self, hash: ModuleHash, component: &Component) -> Result<LoadedModule, ModuleError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| ModuleError::WrongWorld(format!("{e:#}")))?;
        let pre = StorePre::new(pre).map_err(|e| ModuleError::WrongWorld(format!("{e:#}")))?;
        Ok(LoadedModule { hash, pre })
    }

    /// Validates `bytes` (a component, or a core module made into one), checks that it targets
    /// the store world, stores it by hash and caches its compiled code.
    ///
    /// # Errors
    /// [`ModuleError`] naming why the bytes are refused; nothing is stored then.
    pub fn install(&self, bytes: &[u8]) -> Result<LoadedModule, ModuleError> {
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(ModuleError::TooLarge {
                len: bytes.len(),
                max: MAX_MODULE_BYTES,
            });
        }
        let component_bytes = Self::componentize(bytes)?;
        let hash = ModuleHash::of(&component_bytes);
        let component = Component::new(&self.engine, &component_bytes)
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
        let loaded = self.check(hash, &component)?;
        let path = self.module_path(&hash);
        if !path.exists() {
            write_atomic(&path, &component_bytes)?;
            info!(module = %hash.short(), bytes = component_bytes.len(), "module installed");
        }
        self.write_cache(&hash, &component);
        Ok(loaded)
    }

    fn write_cache(&self, hash: &ModuleHash, component: &Component) {
        match component.serialize() {
            Ok(compiled) => {
                if let Err(e) = write_atomic(&self.cache_path(hash), &compiled) {
                    debug!(%e, "could not cache compiled module");
                }
            }
            Err(e) => debug!(%e, "could not serialize compiled module"),
        }
    }

    /// Instantiates a loaded module once and drops the instance (measures instantiation).
    ///
    /// # Errors
    /// [`crate::CallError`] when instantiation fails.
    pub fn instantiate(&self, module: &LoadedModule) -> Result<(), crate::CallError> {
        crate::guest::GuestInstance::new(self, module.clone()).map(|_| ())
    }

    /// The file holding an installed module's component bytes (named by their hash), when
    /// it is installed.
    pub fn module_file(&self, hash: &ModuleHash) -> Option<PathBuf> {
        let path = self.module_path(hash);
        path.exists().then_some(path)
    }

    /// Returns true when the module is installed.
    pub fn is_installed(&self, hash: &ModuleHash) -> bool {
        self.module_path(hash).exists()
    }

    /// Loads an installed module, from the compiled cache when it is valid for this engine.
    ///
    /// # Errors
    /// [`ModuleError::NotInstalled`] when missing; other variants when the stored bytes no
    /// longer validate.
    pub fn load(&self, hash: &ModuleHash) -> Result<LoadedModule, ModuleError> {
        let path = self.module_path(hash);
        if !path.exists() {
            return Err(ModuleError::NotInstalled(hash.to_string()));
        }
        let cache = self.cache_path(hash);
        if cache.exists()
            && let Some(component) = self.deserialize_cached(&cache)
        {
            return self.check(*hash, &component);
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if ModuleHash::of(&bytes) != *hash {
            return Err(ModuleError::Invalid(format!(
                "{} does not hash to its name",
                path.display()
            )));
        }
        let component = Component::new(&self.engine, &bytes)
            .map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
        self.write_cache(hash, &component);
        self.check(*hash, &component)
    }

    #[allow(unsafe_code, reason = "loading compiled code this node wrote itself")]
    fn deserialize_cached(&self, path: &Path) -> Option<Component> {
        // SAFETY: the file lives in this node's private module cache and was written by
        // `write_cache` from a component this engine compiled; its name carries the wasmtime
        // version and the engine's compatibility hash, and wasmtime checks both headers again.
        match unsafe { Component::deserialize_file(&self.engine, path) } {
            Ok(c) => Some(c),
            Err(e) => {
                debug!(%e, "ignoring an unusable compiled-module cache entry");
                None
            }
        }
    }

    /// Lists installed modules with their sizes.
    ///
    /// # Errors
    /// [`ModuleError::Io`] when the directory cannot be read.
    pub fn list(&self) -> Result<Vec<(ModuleHash, u64)>, ModuleError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(hex) = name.strip_suffix(".wasm")
                && let Some(hash) = ModuleHash::from_hex(hex)
            {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((hash, len));
            }
        }
        out.sort();
        Ok(out)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModuleError> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}
