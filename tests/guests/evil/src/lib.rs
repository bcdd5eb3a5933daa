//! A store type that misbehaves on request, to test that the host contains it.
//!
//! Command `op {mode}` authors an intention whose ops are `mode`; `apply` then does what the
//! mode says: `ok` (writes `ok` = count), `reject` (returns an error), `trap` (panics), `loop`
//! (never returns), `alloc` (allocates until memory runs out), `big-write` (writes a 5 MiB
//! value), `count` (counts applies in a global and traps on the third one a single instance
//! sees: a host that reuses instances across applies rejects it, one that starts each apply
//! fresh never does). Queries: `get` (reads `ok`), `huge` (returns 20 MB), `write` (calls `kv-set`),
//! `spin` (never returns).
#![deny(missing_docs)]
#![allow(clippy::panic, reason = "panicking on request is the point")]

use lattice_sdk::{
    Args, Descriptor, Host, Intention, MethodKind, ParamKind, Prepared, StoreError, StoreType,
    method, param,
};
use serde_json::{Value, json};

/// The misbehaving store type.
#[derive(Debug)]
pub struct Evil;

impl StoreType for Evil {
    fn describe() -> Descriptor {
        use MethodKind::{Command, Query};
        Descriptor {
            name: "evil".into(),
            version: "0.1.0".into(),
            description: "misbehaves on request".into(),
            methods: vec![
                method(
                    "op",
                    Command,
                    "author an op",
                    vec![param("mode", ParamKind::Text, "what apply does")],
                    "{}",
                ),
                method("get", Query, "count of ok ops", vec![], "{\"ok\": integer}"),
                method("huge", Query, "returns 20 MB", vec![], "string"),
                method("write", Query, "writes from a query", vec![], "{}"),
                method("spin", Query, "never returns", vec![], "{}"),
            ],
        }
    }

    fn prepare(_: &dyn Host, method: &str, args: &Args) -> Result<Prepared, StoreError> {
        match method {
            "op" => Ok(Prepared::ops(args.text("mode")?.into_bytes())),
            other => Err(StoreError::UnknownMethod(other.into())),
        }
    }

    fn apply(host: &mut dyn Host, op: &Intention) -> Result<(), StoreError> {
        match op.ops.as_slice() {
            b"ok" => {
                let n = host
                    .get(b"ok")
                    .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map_or(0, u64::from_le_bytes);
                host.set(b"ok", &(n + 1).to_le_bytes());
                host.emit("evil", b"ok");
                Ok(())
            }
            b"reject" => {
                host.set(b"half", b"written");
                Err(StoreError::Rejected("asked to reject".into()))
            }
            b"trap" => {
                host.set(b"half", b"written");
                panic!("asked to trap")
            }
            b"loop" => {
                host.set(b"half", b"written");
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            b"alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            b"count" => {
                static APPLIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let seen = APPLIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if seen >= 3 {
                    panic!("apply number {seen} on one instance");
                }
                let n = host
                    .get(b"counted")
                    .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map_or(0, u64::from_le_bytes);
                host.set(b"counted", &(n + 1).to_le_bytes());
                Ok(())
            }
            b"big-write" => {
                host.set(b"big", &vec![0u8; 5 << 20]);
                Ok(())
            }
            _ => Err(StoreError::Rejected("unknown mode".into())),
        }
    }

    fn query(host: &dyn Host, method: &str, _: &Args) -> Result<Value, StoreError> {
        match method {
            "get" => {
                let n = host
                    .get(b"ok")
                    .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map_or(0, u64::from_le_bytes);
                let counted = host
                    .get(b"counted")
                    .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map_or(0, u64::from_le_bytes);
                Ok(json!({"ok": n, "half": host.get(b"half").is_some(), "counted": counted}))
            }
            "huge" => Ok(Value::String("x".repeat(20_000_000))),
            "write" => {
                write_from_query();
                Ok(json!({}))
            }
            "spin" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            other => Err(StoreError::UnknownMethod(other.into())),
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn write_from_query() {
    lattice_sdk::bindings::lattice::store::host::kv_set(b"sneaky", b"1");
}

#[cfg(not(target_arch = "wasm32"))]
fn write_from_query() {}

lattice_sdk::export_store!(Evil);
