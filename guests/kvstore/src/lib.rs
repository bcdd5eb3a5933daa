//! The key-value store type (`kvstore`): a last-writer-wins map from byte keys to byte values.
//!
//! Commands: `put`, `delete`, `batch` (several puts and deletes, atomic on every replica).
//! Queries: `get`, `list` (by prefix), `inspect` (every concurrent head of a key).
//! Each write cites the current heads of the keys it touches, so it supersedes what its author
//! saw; concurrent writes both survive as heads and the read reports `conflicted`.
//! Every applied change emits a `kv` watch event `{"key", "value", "size"}` (value `null` when
//! deleted; a value over [`MAX_EVENT_VALUE`] bytes is left out of the event — `"value": null,
//! "omitted": true` — and read with `get`). Values are at most [`MAX_VALUE`] bytes (1 MiB).
//!
//! Ops payload (version 1): `1u8 | count u16 | op*count`, op = `tag u8 (1 put, 2 delete) |
//! key_len u32 | key | (put only) value_len u32 | value`, little-endian.
#![deny(missing_docs)]

use lattice_sdk::{
    Args, Descriptor, Host, Intention, LwwTable, MethodKind, ParamKind, Prepared, StoreError,
    StoreType, bytes_json, json_bytes, method, optional_param, param,
};
use serde_json::{Value, json};

/// Longest key accepted (bytes).
pub const MAX_KEY: usize = 1024;
/// Most operations in one batch.
pub const MAX_BATCH: usize = 1000;
/// Largest value accepted (bytes): 1 MiB.
pub const MAX_VALUE: usize = 1 << 20;
/// Largest value a watch event carries; larger values are announced by size (read them with
/// `get`), so events stay small whatever the values are.
pub const MAX_EVENT_VALUE: usize = 16 << 10;

const TABLE: &[u8] = b"kv/";

/// The key-value store type.
#[derive(Debug)]
pub struct KvStore;

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Delete `key`.
    Delete(Vec<u8>),
}

impl KvOp {
    fn key(&self) -> &[u8] {
        match self {
            KvOp::Put(k, _) | KvOp::Delete(k) => k,
        }
    }
}

/// Encodes a batch as the ops payload.
pub fn encode_ops(ops: &[KvOp]) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&(ops.len() as u16).to_le_bytes());
    for op in ops {
        match op {
            KvOp::Put(k, v) => {
                out.push(1);
                out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                out.extend_from_slice(k);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            KvOp::Delete(k) => {
                out.push(2);
                out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                out.extend_from_slice(k);
            }
        }
    }
    out
}

fn reject(what: &str) -> StoreError {
    StoreError::Rejected(format!("malformed kv ops: {what}"))
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
    if bytes.len() < n {
        return Err(reject("truncated"));
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

fn take_len(bytes: &mut &[u8]) -> Result<usize, StoreError> {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(take(bytes, 4)?);
    Ok(u32::from_le_bytes(raw) as usize)
}

/// Decodes the ops payload.
///
/// # Errors
/// [`StoreError::Rejected`] when the payload is malformed.
pub fn decode_ops(mut bytes: &[u8]) -> Result<Vec<KvOp>, StoreError> {
    if take(&mut bytes, 1)? != [1] {
        return Err(reject("unknown version"));
    }
    let mut raw = [0u8; 2];
    raw.copy_from_slice(take(&mut bytes, 2)?);
    let count = u16::from_le_bytes(raw) as usize;
    let mut ops = Vec::with_capacity(count.min(MAX_BATCH));
    for _ in 0..count {
        let tag = take(&mut bytes, 1)?[0];
        let len = take_len(&mut bytes)?;
        let key = take(&mut bytes, len)?.to_vec();
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(reject("bad key length"));
        }
        ops.push(match tag {
            1 => {
                let len = take_len(&mut bytes)?;
                if len > MAX_VALUE {
                    return Err(reject("value over the limit"));
                }
                KvOp::Put(key, take(&mut bytes, len)?.to_vec())
            }
            2 => KvOp::Delete(key),
            _ => return Err(reject("unknown op tag")),
        });
    }
    if !bytes.is_empty() {
        return Err(reject("trailing bytes"));
    }
    Ok(ops)
}

fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE {
        return Err(StoreError::InvalidArgument(format!(
            "value is {} bytes; the limit is {MAX_VALUE} (1 MiB)",
            value.len()
        )));
    }
    Ok(())
}

fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument("key must not be empty".into()));
    }
    if key.len() > MAX_KEY {
        return Err(StoreError::InvalidArgument(format!(
            "key is {} bytes; the limit is {MAX_KEY}",
            key.len()
        )));
    }
    Ok(())
}

/// Builds the intention for a batch: last op per key wins, deps = heads of every key touched.
fn prepare_batch(host: &dyn Host, ops: Vec<KvOp>) -> Result<Prepared, StoreError> {
    if ops.is_empty() {
        return Err(StoreError::InvalidArgument(
            "a batch needs at least one op".into(),
        ));
    }
    if ops.len() > MAX_BATCH {
        return Err(StoreError::InvalidArgument(format!(
            "a batch holds at most {MAX_BATCH} ops"
        )));
    }
    let mut unique: Vec<KvOp> = Vec::with_capacity(ops.len());
    for op in ops.into_iter().rev() {
        check_key(op.key())?;
        if let KvOp::Put(_, value) = &op {
            check_value(value)?;
        }
        if !unique.iter().any(|o| o.key() == op.key()) {
            unique.push(op);
        }
    }
    unique.reverse();
    let keys: Vec<&[u8]> = unique.iter().map(KvOp::key).collect();
    let deps = LwwTable::new(TABLE).deps_for(host, &keys)?;
    Ok(Prepared {
        deps,
        ..Prepared::ops(encode_ops(&unique))
    })
}

fn parse_batch(args: &Args) -> Result<Vec<KvOp>, StoreError> {
    let Some(Value::Array(items)) = args.get("ops") else {
        return Err(StoreError::InvalidArgument(
            "argument `ops` must be an array of {\"put\": key, \"value\": v} or {\"delete\": key}"
                .into(),
        ));
    };
    items
        .iter()
        .map(|item| {
            let bytes = |name: &str| item.get(name).and_then(json_bytes);
            match (bytes("put"), bytes("value"), bytes("delete")) {
                (Some(k), Some(v), None) => Ok(KvOp::Put(k, v)),
                (None, None, Some(k)) => Ok(KvOp::Delete(k)),
                _ => Err(StoreError::InvalidArgument(format!(
                    "batch op {item} must be {{\"put\": key, \"value\": v}} or {{\"delete\": key}}"
                ))),
            }
        })
        .collect()
}

impl StoreType for KvStore {
    fn describe() -> Descriptor {
        use MethodKind::{Command, Query};
        use ParamKind::{Bytes, Integer, Json};
        Descriptor {
            name: "kvstore".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "last-writer-wins key-value map with conflict detection".into(),
            methods: vec![
                method(
                    "put",
                    Command,
                    "set a key",
                    vec![
                        param("key", Bytes, "the key"),
                        param("value", Bytes, "the value"),
                    ],
                    "{}",
                ),
                method(
                    "delete",
                    Command,
                    "delete a key",
                    vec![param("key", Bytes, "the key")],
                    "{}",
                ),
                method(
                    "batch",
                    Command,
                    "apply several puts and deletes atomically",
                    vec![param(
                        "ops",
                        Json,
                        "[{\"put\": key, \"value\": v} | {\"delete\": key}]",
                    )],
                    "{}",
                ),
                method(
                    "get",
                    Query,
                    "read a key",
                    vec![param("key", Bytes, "the key")],
                    "{\"value\": bytes|null, \"conflicted\": bool}",
                ),
                method(
                    "list",
                    Query,
                    "list live keys by prefix",
                    vec![
                        optional_param("prefix", Bytes, "key prefix (default: all)"),
                        optional_param("limit", Integer, "most items (default 1000)"),
                    ],
                    "{\"items\": [{\"key\", \"value\", \"conflicted\"}]}",
                ),
                method(
                    "inspect",
                    Query,
                    "every concurrent head of a key",
                    vec![param("key", Bytes, "the key")],
                    "{\"key\", \"value\", \"conflicted\", \"heads\": [{\"hash\", \"author\", \"hlc\", \"value\"}]}",
                ),
            ],
        }
    }

    fn prepare(host: &dyn Host, method: &str, args: &Args) -> Result<Prepared, StoreError> {
        match method {
            "put" => prepare_batch(
                host,
                vec![KvOp::Put(args.bytes("key")?, args.bytes("value")?)],
            ),
            "delete" => prepare_batch(host, vec![KvOp::Delete(args.bytes("key")?)]),
            "batch" => prepare_batch(host, parse_batch(args)?),
            other => Err(StoreError::UnknownMethod(other.into())),
        }
    }

    fn apply(host: &mut dyn Host, op: &Intention) -> Result<(), StoreError> {
        let table = LwwTable::new(TABLE);
        for kv in decode_ops(&op.ops)? {
            let (key, value) = match &kv {
                KvOp::Put(k, v) => (k.as_slice(), Some(v.as_slice())),
                KvOp::Delete(k) => (k.as_slice(), None),
            };
            if let Some(read) = table.write(host, key, value, op)? {
                let size = read.value.as_ref().map_or(0, Vec::len);
                let event = match read.value.as_deref() {
                    Some(v) if v.len() > MAX_EVENT_VALUE => {
                        json!({ "key": bytes_json(key), "value": null, "size": size, "omitted": true })
                    }
                    value => {
                        json!({ "key": bytes_json(key), "value": value.map(bytes_json), "size": size })
                    }
                };
                host.emit("kv", event.to_string().as_bytes());
            }
        }
        Ok(())
    }

    fn query(host: &dyn Host, method: &str, args: &Args) -> Result<Value, StoreError> {
        let table = LwwTable::new(TABLE);
        match method {
            "get" => {
                let read = table.get(host, &args.bytes("key")?)?;
                Ok(json!({
                    "value": read.as_ref().and_then(|r| r.value.as_deref()).map(bytes_json),
                    "conflicted": read.is_some_and(|r| r.conflicted),
                }))
            }
            "list" => {
                let prefix = args.opt_bytes("prefix")?.unwrap_or_default();
                let limit = args.opt_integer("limit")?.unwrap_or(1000).clamp(0, 100_000) as usize;
                let items: Vec<Value> = table
                    .list(host, &prefix, limit)?
                    .into_iter()
                    .map(|(k, r)| json!({"key": bytes_json(&k), "value": r.value.as_deref().map(bytes_json), "conflicted": r.conflicted}))
                    .collect();
                Ok(json!({ "items": items }))
            }
            "inspect" => {
                let key = args.bytes("key")?;
                let heads = table.heads(host, &key)?;
                let read = table.get(host, &key)?;
                let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
                Ok(json!({
                    "key": bytes_json(&key),
                    "value": read.as_ref().and_then(|r| r.value.as_deref()).map(bytes_json),
                    "conflicted": read.is_some_and(|r| r.conflicted),
                    "heads": heads.iter().map(|h| json!({
                        "hash": hex(&h.hash),
                        "author": hex(&h.author),
                        "hlc": format!("{}.{}", h.hlc.wall_ms, h.hlc.counter),
                        "value": h.value.as_deref().map(bytes_json),
                    })).collect::<Vec<_>>(),
                }))
            }
            other => Err(StoreError::UnknownMethod(other.into())),
        }
    }
}

lattice_sdk::export_store!(KvStore);

#[cfg(test)]
mod tests {
    use lattice_sdk::{Hlc, MemoryHost};

    use super::*;

    fn intention(n: u8, wall: u64, prepared: &Prepared) -> Intention {
        Intention {
            hash: vec![n; 32],
            author: vec![n; 32],
            hlc: Hlc {
                wall_ms: wall,
                counter: 0,
            },
            deps: prepared.deps.clone(),
            ops: prepared.ops.clone(),
        }
    }

    fn call(host: &mut MemoryHost, n: u8, method: &str, args: Value) -> Result<(), StoreError> {
        let prepared = KvStore::prepare(host, method, &Args::from_json(args))?;
        KvStore::apply(host, &intention(n, u64::from(n), &prepared))
    }

    fn query(host: &MemoryHost, method: &str, args: Value) -> Result<Value, StoreError> {
        KvStore::query(host, method, &Args::from_json(args))
    }

    #[test]
    fn a_one_mib_value_is_stored_and_announced_by_size() -> Result<(), StoreError> {
        let mut host = MemoryHost::new();
        let big = "x".repeat(MAX_VALUE);
        call(&mut host, 1, "put", json!({"key": "big", "value": big}))?;
        assert_eq!(
            query(&host, "get", json!({"key": "big"}))?["value"],
            json!(big)
        );
        let event: Value = serde_json::from_slice(&host.events[0].1)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        assert_eq!(event["size"], MAX_VALUE);
        assert_eq!(event["omitted"], true);
        let over = "x".repeat(MAX_VALUE + 1);
        assert!(matches!(
            call(&mut host, 2, "put", json!({"key": "big", "value": over})),
            Err(StoreError::InvalidArgument(_))
        ));
        Ok(())
    }

    #[test]
    fn put_get_delete_list_and_events() -> Result<(), StoreError> {
        let mut host = MemoryHost::new();
        call(&mut host, 1, "put", json!({"key": "a", "value": "1"}))?;
        call(
            &mut host,
            2,
            "put",
            json!({"key": "b", "value": {"hex": "ff00"}}),
        )?;
        assert_eq!(
            query(&host, "get", json!({"key": "a"}))?,
            json!({"value": "1", "conflicted": false})
        );
        assert_eq!(
            query(&host, "list", json!({}))?["items"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        call(&mut host, 3, "delete", json!({"key": "a"}))?;
        assert_eq!(
            query(&host, "get", json!({"key": "a"}))?["value"],
            Value::Null
        );
        assert_eq!(host.events.len(), 3);
        assert!(query(&host, "nope", json!({})).is_err());
        assert!(call(&mut host, 4, "put", json!({"key": ""})).is_err());
        Ok(())
    }

    #[test]
    fn batch_is_one_op_and_last_write_per_key_wins() -> Result<(), StoreError> {
        let mut host = MemoryHost::new();
        call(
            &mut host,
            1,
            "batch",
            json!({"ops": [
                {"put": "x", "value": "1"}, {"put": "y", "value": "2"}, {"put": "x", "value": "3"}
            ]}),
        )?;
        assert_eq!(query(&host, "get", json!({"key": "x"}))?["value"], "3");
        assert_eq!(query(&host, "get", json!({"key": "y"}))?["value"], "2");
        assert!(call(&mut host, 2, "batch", json!({"ops": []})).is_err());
        Ok(())
    }

    #[test]
    fn concurrent_puts_conflict_until_a_write_cites_both() -> Result<(), StoreError> {
        let mut host = MemoryHost::new();
        let a = KvStore::prepare(
            &host,
            "put",
            &Args::from_json(json!({"key": "k", "value": "a"})),
        )?;
        let b = KvStore::prepare(
            &host,
            "put",
            &Args::from_json(json!({"key": "k", "value": "b"})),
        )?;
        KvStore::apply(&mut host, &intention(1, 5, &a))?;
        KvStore::apply(&mut host, &intention(2, 6, &b))?;
        let read = query(&host, "inspect", json!({"key": "k"}))?;
        assert_eq!(read["conflicted"], true);
        assert_eq!(read["value"], "b");
        assert_eq!(read["heads"].as_array().map(Vec::len), Some(2));
        call(&mut host, 3, "put", json!({"key": "k", "value": "c"}))?;
        assert_eq!(
            query(&host, "get", json!({"key": "k"}))?,
            json!({"value": "c", "conflicted": false})
        );
        Ok(())
    }

    #[test]
    fn malformed_ops_are_rejected() {
        let mut host = MemoryHost::new();
        for ops in [
            vec![],
            vec![9],
            vec![1, 1, 0, 7],
            vec![1, 1, 0, 1, 0, 0, 0, 0],
        ] {
            let op = Intention {
                hash: vec![1; 32],
                author: vec![1; 32],
                hlc: Hlc {
                    wall_ms: 1,
                    counter: 0,
                },
                deps: vec![],
                ops,
            };
            assert!(matches!(
                KvStore::apply(&mut host, &op),
                Err(StoreError::Rejected(_))
            ));
        }
        assert!(host.kv.is_empty());
    }
}
