//! The [`StoreType`] trait and the glue between it and the generated bindings.

use serde_json::Value;

use crate::host::WasmHost;
use crate::{
    Args, Descriptor, Host, Intention, Method, MethodKind, Param, ParamKind, Prepared, StoreError,
};

/// A store type: what `describe`, `prepare`, `apply` and `query` do.
///
/// `prepare` and `query` get read-only state; `apply` gets writable state and must be
/// deterministic (no clocks, randomness or hash-map iteration order).
pub trait StoreType {
    /// Names the store type and lists its methods with their parameters.
    fn describe() -> Descriptor;

    /// Turns a command into ops, deps and pruning hints.
    ///
    /// # Errors
    /// [`StoreError::UnknownMethod`] or [`StoreError::InvalidArgument`] for bad calls.
    fn prepare(host: &dyn Host, method: &str, args: &Args) -> Result<Prepared, StoreError>;

    /// Projects one witnessed intention.
    ///
    /// # Errors
    /// [`StoreError::Rejected`] when the ops are not valid; the host discards the writes.
    fn apply(host: &mut dyn Host, op: &Intention) -> Result<(), StoreError>;

    /// Answers a query with a JSON value.
    ///
    /// # Errors
    /// [`StoreError::UnknownMethod`] or [`StoreError::InvalidArgument`] for bad calls.
    fn query(host: &dyn Host, method: &str, args: &Args) -> Result<Value, StoreError>;
}

/// Builds a [`Method`] description.
pub fn method(
    name: &str,
    kind: MethodKind,
    description: &str,
    params: Vec<Param>,
    returns: &str,
) -> Method {
    Method {
        name: name.into(),
        kind,
        description: description.into(),
        params,
        returns: returns.into(),
    }
}

/// Builds a required [`Param`].
pub fn param(name: &str, kind: ParamKind, description: &str) -> Param {
    Param {
        name: name.into(),
        kind,
        optional: false,
        description: description.into(),
    }
}

/// Builds an optional [`Param`].
pub fn optional_param(name: &str, kind: ParamKind, description: &str) -> Param {
    Param {
        optional: true,
        ..param(name, kind, description)
    }
}

/// Runs `prepare` against the Wasm host (used by [`crate::export_store!`]).
///
/// # Errors
/// As [`StoreType::prepare`], plus bad JSON arguments.
pub fn run_prepare<T: StoreType>(method: &str, args: &str) -> Result<Prepared, StoreError> {
    T::prepare(&WasmHost, method, &Args::parse(args)?)
}

/// Runs `apply` against the Wasm host (used by [`crate::export_store!`]).
///
/// # Errors
/// As [`StoreType::apply`].
pub fn run_apply<T: StoreType>(op: &Intention) -> Result<(), StoreError> {
    T::apply(&mut WasmHost, op)
}

/// Runs `query` against the Wasm host and encodes the JSON result.
///
/// # Errors
/// As [`StoreType::query`], plus bad JSON arguments.
pub fn run_query<T: StoreType>(method: &str, args: &str) -> Result<String, StoreError> {
    T::query(&WasmHost, method, &Args::parse(args)?).map(|v| v.to_string())
}
