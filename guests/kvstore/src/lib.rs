//! The key-value store type (`kvstore`): a last-writer-wins map from byte keys to byte values.
//!
//! Commands: `put`, `delete`, `batch` (several puts and deletes, atomic on every replica).
//! Queries: `get`, `list` (by prefix), `inspect` (every concurrent head of a key).
//! Each write cites the current heads of the keys it touches, so it supersedes what its author
//! saw; concurrent writes both survive as heads and the read reports `conflicted`.
//! Every applied change emits a `kv` watch event `{"key", "value", "size"}` (value `null` when
//! deleted; a value over [`MAX_EVENT_VALUE`] bytes is left out of the event — `"value": null,
//! "omitted": true` — and read with `get`). Values are at most [`MAX_LARGE_VALUE`] bytes
//! (8 MiB); a value over [`BLOB_THRESHOLD`] bytes is kept as a blob of the store
//! (`lattice:store/blobs`): the intention carries its hash and size, every member fetches
//! the blob, and `get` reads it back — callers see a value like any other.
//!
//! Ops payload (version 1): `1u8 | count u16 | op*count`, op = `tag u8 (1 put, 2 delete,
//! 3 put-blob) | key_len u32 | key | (put) value_len u32 | value | (put-blob) hash [32] |
//! size u64`, little-endian. Stored values: `0u8 | value` or `1u8 | hash [32] | size u64`.
#![deny(missing_docs)]

use lattice_sdk::{
    Args, BlobError, Descriptor, Host, Intention, LwwTable, MethodKind, ParamKind, Prepared,
    StoreError, StoreType, bytes_json, json_bytes, method, optional_param, param, read_blob,
};
use serde_json::{Value, json};

/// Longest key accepted (bytes).
pub const MAX_KEY: usize = 1024;
/// Most operations in one batch.
pub const MAX_BATCH: usize = 1000;
/// Largest value carried inside an intention (bytes): 1 MiB.
pub const MAX_VALUE: usize = 1 << 20;
/// Values over this many bytes are kept as blobs.
pub const BLOB_THRESHOLD: usize = 64 << 10;
/// Largest value accepted (bytes): 8 MiB (kept as a blob).
pub const MAX_LARGE_VALUE: usize = 8 << 20;
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
    /// Set `key` to the value kept as blob `hash` of `size` bytes.
    PutBlob(Vec<u8>, [u8; 32], u64),
}

impl KvOp {
    fn key(&self) -> &[u8] {
        match self {
            KvOp::Put(k, _) | KvOp::Delete(k) | KvOp::PutBlob(k, _, _) => k,
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
            KvOp::PutBlob(k, hash, size) => {
                out.push(3);
                out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                out.extend_from_slice(k);
                out.extend_from_slice(hash);
                out.extend_from_slice(&size.to_le_bytes());
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
            3 => {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(take(&mut bytes, 32)?);
                let mut raw = [0u8; 8];
                raw.copy_from_slice(take(&mut bytes, 8)?);
                let size = u64::from_le_bytes(raw);
                if size > MAX_LARGE_VALUE as u64 {
                    return Err(reject("value over the limit"));
                }
                KvOp::PutBlob(key, hash, size)
            }
            _ => return Err(reject("unknown op tag")),
        });
    }
    if !bytes.is_empty() {
        return Err(reject("trailing bytes"));
    }
    Ok(ops)
}

fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_LARGE_VALUE {
        return Err(StoreError::InvalidArgument(format!(
            "value is {} bytes; the limit is {MAX_LARGE_VALUE} (8 MiB)",
            value.len()
        )));
    }
    Ok(())
}

/// A value as the table stores it: the bytes, or the blob that holds them.
enum Stored<'a> {
    Inline(&'a [u8]),
    Blob([u8; 32], u64),
}

impl Stored<'_> {
    fn encode(&self) -> Vec<u8> {
        match self {
            Stored::Inline(v) => [&[0u8][..], v].concat(),
            Stored::Blob(hash, size) => [&[1u8][..], hash, &size.to_le_bytes()].concat(),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Stored<'_>, StoreError> {
        match bytes.split_first() {
            Some((0, v)) => Ok(Stored::Inline(v)),
            Some((1, rest)) if rest.len() == 40 => {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&rest[..32]);
                let mut size = [0u8; 8];
                size.copy_from_slice(&rest[32..]);
                Ok(Stored::Blob(hash, u64::from_le_bytes(size)))
            }
            _ => Err(StoreError::Internal(
                "a stored kv value is malformed".into(),
            )),
        }
    }

    fn size(&self) -> u64 {
        match self {
            Stored::Inline(v) => v.len() as u64,
            Stored::Blob(_, size) => *size,
        }
    }
}

/// The value a stored entry holds: its bytes, read from the blob when it is one.
fn value_of(host: &dyn Host, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
    match Stored::decode(stored)? {
        Stored::Inline(v) => Ok(v.to_vec()),
        Stored::Blob(hash, size) => read_blob(host, &hash, size).map_err(|e| {
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            StoreError::Internal(match e {
                BlobError::NotHere => format!(
                    "the value ({size} bytes) is blob {hex}, not fetched from the store's peers yet; try again shortly"
                ),
                other => format!("the value's blob {hex} cannot be read: {other:?}"),
            })
        }),
    }
}

/// The value `stored` holds, as JSON (`null` for none).
fn value_json(host: &dyn Host, stored: Option<&[u8]>) -> Result<Value, StoreError> {
    Ok(match stored {
        Some(s) => bytes_json(&value_of(host, s)?),
        None => Value::Null,
    })
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
    // Large values travel as blobs: the intention names them.
    let mut blob_bytes = 0;
    for op in &mut unique {
        if let KvOp::Put(key, value) = op
            && value.len() > BLOB_THRESHOLD
        {
            blob_bytes += value.len();
            if blob_bytes > MAX_LARGE_VALUE {
                return Err(StoreError::InvalidArgument(format!(
                    "a batch carries at most {MAX_LARGE_VALUE} bytes of large values"
                )));
            }
            let name = host.blob_put(value);
            let hash: [u8; 32] = name
                .try_into()
                .map_err(|_| StoreError::Internal("the host named a blob oddly".into()))?;
            *op = KvOp::PutBlob(std::mem::take(key), hash, value.len() as u64);
        }
    }
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
            let (key, stored) = match &kv {
                KvOp::Put(k, v) => (k.as_slice(), Some(Stored::Inline(v).encode())),
                KvOp::Delete(k) => (k.as_slice(), None),
                KvOp::PutBlob(k, hash, size) => {
                    (k.as_slice(), Some(Stored::Blob(*hash, *size).encode()))
                }
            };
            let Some((read, removed)) = table.write_removing(host, key, stored.as_deref(), op)?
            else {
                continue;
            };
            // The state references a blob once per head that holds it.
            if let KvOp::PutBlob(_, hash, _) = &kv {
                host.blob_add_ref(hash);
            }
            for head in removed {
                if let Some(Stored::Blob(hash, _)) =
                    head.value.as_deref().map(Stored::decode).transpose()?
                {
                    host.blob_drop_ref(&hash);
                }
            }
            let winner = read.value.as_deref().map(Stored::decode).transpose()?;
            let size = winner.as_ref().map_or(0, Stored::size);
            let event = match winner {
                Some(Stored::Inline(v)) if v.len() <= MAX_EVENT_VALUE => {
                    json!({ "key": bytes_json(key), "value": bytes_json(v), "size": size })
                }
                Some(_) => {
                    json!({ "key": bytes_json(key), "value": null, "size": size, "omitted": true })
                }
                None => json!({ "key": bytes_json(key), "value": null, "size": 0 }),
            };
            host.emit("kv", event.to_string().as_bytes());
        }
        Ok(())
    }

    fn query(host: &dyn Host, method: &str, args: &Args) -> Result<Value, StoreError> {
        let table = LwwTable::new(TABLE);
        match method {
            "get" => {
                let read = table.get(host, &args.bytes("key")?)?;
                Ok(json!({
                    "value": value_json(host, read.as_ref().and_then(|r| r.value.as_deref()))?,
                    "conflicted": read.is_some_and(|r| r.conflicted),
                }))
            }
            "list" => {
                let prefix = args.opt_bytes("prefix")?.unwrap_or_default();
                let limit = args.opt_integer("limit")?.unwrap_or(1000).clamp(0, 100_000) as usize;
                let items = table
                    .list(host, &prefix, limit)?
                    .into_iter()
                    .map(|(k, r)| {
                        Ok(json!({"key": bytes_json(&k), "value": value_json(host, r.value.as_deref())?, "conflicted": r.conflicted}))
                    })
                    .collect::<Result<Vec<Value>, StoreError>>()?;
                Ok(json!({ "items": items }))
            }
            "inspect" => {
                let key = args.bytes("key")?;
                let heads = table.heads(host, &key)?;
                let read = table.get(host, &key)?;
                let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
                Ok(json!({
                    "key": bytes_json(&key),
                    "value": value_json(host, read.as_ref().and_then(|r| r.value.as_deref()))?,
                    "conflicted": read.is_some_and(|r| r.conflicted),
                    "heads": heads.iter().map(|h| Ok(json!({
                        "hash": hex(&h.hash),
                        "author": hex(&h.author),
                        "hlc": format!("{}.{}", h.hlc.wall_ms, h.hlc.counter),
                        "value": value_json(host, h.value.as_deref())?,
                    }))).collect::<Result<Vec<Value>, StoreError>>()?,
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
    fn a_large_value_is_a_blob_read_back_whole_and_announced_by_size() -> Result<(), StoreError> {
        let mut host = MemoryHost::new();
        let big: String = (0..MAX_VALUE + 3)
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        call(&mut host, 1, "put", json!({"key": "big", "value": big}))?;
        assert_eq!(
            query(&host, "get", json!({"key": "big"}))?["value"],
            json!(big)
        );
        // The intention named a blob; the state references it once.
        assert_eq!(host.blobs.borrow().len(), 1);
        assert_eq!(host.blob_refs.values().copied().collect::<Vec<_>>(), [1]);
        let event: Value = serde_json::from_slice(&host.events[0].1)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        assert_eq!(event["size"], MAX_VALUE + 3);
        assert_eq!(event["omitted"], true);
        // A small value replacing it (citing it) drops the reference.
        call(&mut host, 2, "put", json!({"key": "big", "value": "small"}))?;
        assert!(host.blob_refs.is_empty(), "{:?}", host.blob_refs);
        assert_eq!(
            query(&host, "get", json!({"key": "big"}))?["value"],
            "small"
        );
        let over = "x".repeat(MAX_LARGE_VALUE + 1);
        assert!(matches!(
            call(&mut host, 3, "put", json!({"key": "big", "value": over})),
            Err(StoreError::InvalidArgument(_))
        ));
        // A blob not here yet is said so, not read as empty.
        call(&mut host, 4, "put", json!({"key": "far", "value": big}))?;
        host.blobs.borrow_mut().clear();
        assert!(query(&host, "get", json!({"key": "far"})).is_err());
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
