//! One instantiated guest: calls with fuel and memory limits, error mapping, and
//! re-instantiation after a trap (wasmtime poisons an instance that trapped).

use wasmtime::{Store, StoreLimitsBuilder, Trap};

use crate::bindings::Store as StoreWorld;
use crate::bindings::lattice::store::types::{self as wit, StoreError};
use crate::error::{CallError, GuestError};
use crate::host::{HostState, HostTrap, Mode};
use crate::modules::{Limits, LoadedModule, Runtime};

pub(crate) struct GuestInstance {
    module: LoadedModule,
    engine: wasmtime::Engine,
    limits: Limits,
    store: Store<HostState>,
    world: StoreWorld,
    poisoned: bool,
}

/// Maps a wasmtime error from a guest call to a [`CallError`]; the one place that does.
pub(crate) fn map_error(err: wasmtime::Error) -> CallError {
    if let Some(t) = err.downcast_ref::<HostTrap>() {
        return match t {
            HostTrap::Forbidden(m) => CallError::Forbidden(m.clone()),
            HostTrap::Limit(m) => CallError::LimitExceeded(m.clone()),
            HostTrap::Storage(m) => CallError::Host(m.clone()),
        };
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return match trap {
            Trap::OutOfFuel => CallError::FuelExhausted,
            other => CallError::Trap(other.to_string()),
        };
    }
    let text = format!("{err:#}");
    if text.contains("grow") || text.contains("memory") || text.contains("limit") {
        CallError::LimitExceeded(text)
    } else {
        CallError::Trap(text)
    }
}

pub(crate) fn guest_error(err: StoreError) -> CallError {
    CallError::Guest(match err {
        StoreError::UnknownMethod(m) => GuestError::UnknownMethod(m),
        StoreError::InvalidArgument(m) => GuestError::InvalidArgument(m),
        StoreError::Rejected(m) => GuestError::Rejected(m),
        StoreError::Internal(m) => GuestError::Internal(m),
    })
}

fn new_store(engine: &wasmtime::Engine, limits: &Limits) -> Store<HostState> {
    let store_limits = StoreLimitsBuilder::new()
        .memory_size(limits.memory_bytes)
        .instances(16)
        .tables(16)
        .memories(4)
        .table_elements(100_000)
        .trap_on_grow_failure(true)
        .build();
    let mut store = Store::new(
        engine,
        HostState::new(store_limits, limits.max_apply_write_bytes),
    );
    store.limiter(|s| &mut s.limits);
    store
}

impl GuestInstance {
    pub(crate) fn new(runtime: &Runtime, module: LoadedModule) -> Result<GuestInstance, CallError> {
        let mut store = new_store(&runtime.engine, &runtime.limits);
        store
            .set_fuel(runtime.limits.call_fuel)
            .map_err(|e| CallError::Host(e.to_string()))?;
        let world = module.pre.instantiate(&mut store).map_err(map_error)?;
        Ok(GuestInstance {
            module,
            engine: runtime.engine.clone(),
            limits: runtime.limits.clone(),
            store,
            world,
            poisoned: false,
        })
    }

    pub(crate) fn host(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    /// Replaces a trapped instance with a fresh one, keeping the host state.
    fn revive(&mut self) -> Result<(), CallError> {
        if !self.poisoned {
            return Ok(());
        }
        let mut store = new_store(&self.engine, &self.limits);
        std::mem::swap(store.data_mut(), self.store.data_mut());
        // The trapped instance's writers die with it (their temporary files go).
        store.data_mut().writers.clear();
        store
            .set_fuel(self.limits.call_fuel)
            .map_err(|e| CallError::Host(e.to_string()))?;
        let world = self.module.pre.instantiate(&mut store).map_err(map_error)?;
        self.store = store;
        self.world = world;
        self.poisoned = false;
        Ok(())
    }

    fn call<T>(
        &mut self,
        mode: Mode,
        fuel: u64,
        f: impl FnOnce(&StoreWorld, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, CallError> {
        self.revive()?;
        self.store.data_mut().mode = mode;
        self.store
            .set_fuel(fuel)
            .map_err(|e| CallError::Host(e.to_string()))?;
        let result = f(&self.world, &mut self.store);
        self.store.data_mut().mode = Mode::Read;
        result.map_err(|e| {
            self.poisoned = true;
            map_error(e)
        })
    }

    pub(crate) fn describe(&mut self) -> Result<wit::Descriptor, CallError> {
        let fuel = self.limits.call_fuel;
        self.call(Mode::Read, fuel, |w, s| w.call_describe(s))
    }

    pub(crate) fn prepare(&mut self, method: &str, args: &str) -> Result<wit::Prepared, CallError> {
        let fuel = self.limits.call_fuel;
        let prepared = self
            .call(Mode::Prepare, fuel, |w, s| w.call_prepare(s, method, args))?
            .map_err(guest_error)?;
        if prepared.ops.len() > self.limits.max_result_bytes {
            return Err(CallError::LimitExceeded(format!(
                "prepared ops of {} bytes",
                prepared.ops.len()
            )));
        }
        Ok(prepared)
    }

    pub(crate) fn query(&mut self, method: &str, args: &str) -> Result<String, CallError> {
        let fuel = self.limits.call_fuel;
        let result = self
            .call(Mode::Read, fuel, |w, s| w.call_query(s, method, args))?
            .map_err(guest_error)?;
        if result.len() > self.limits.max_result_bytes {
            return Err(CallError::LimitExceeded(format!(
                "query result of {} bytes exceeds {}",
                result.len(),
                self.limits.max_result_bytes
            )));
        }
        Ok(result)
    }

    /// Applies `op` on a fresh instance of the module (the host state moves into it for the
    /// call and back out after), so no earlier call can leave anything in guest memory that
    /// changes the outcome: `apply` is a function of the state and the intention alone. This
    /// instance (serving prepare and query) is not touched.
    pub(crate) fn apply(&mut self, op: &wit::Intention) -> Result<(), CallError> {
        let mut store = new_store(&self.engine, &self.limits);
        std::mem::swap(store.data_mut(), self.store.data_mut());
        // The trapped instance's writers die with it (their temporary files go).
        store.data_mut().writers.clear();
        let result = (|| {
            store
                .set_fuel(self.limits.apply_fuel)
                .map_err(|e| CallError::Host(e.to_string()))?;
            // Failing to instantiate (the pool is full, say) says nothing about the
            // intention: a host failure, so projection stops and retries instead of rejecting.
            let world = self
                .module
                .pre
                .instantiate(&mut store)
                .map_err(|e| CallError::Host(format!("instantiating for apply: {e:#}")))?;
            store.data_mut().mode = Mode::Apply;
            let outcome = world.call_apply(&mut store, op).map_err(map_error);
            store.data_mut().mode = Mode::Read;
            outcome?.map_err(guest_error)
        })();
        std::mem::swap(store.data_mut(), self.store.data_mut());
        result
    }
}
