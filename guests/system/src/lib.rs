//! The system table (`system`): every store's system partition, projected beside its data
//! partition. It records who the store's peers are and what the store contains:
//!
//! | key | value |
//! |---|---|
//! | `name` | `{"name"}`: the store's name |
//! | `strategy` | `{"strategy": "independent"}` or `{"strategy": "inherited", "parent": id}` |
//! | `peer/<key>/status` | `{"status": "invited"\|"active"\|"dormant"\|"revoked", "refused": [[from, to\|null]], "by", "op"}` (`by`/`op`: writer and intention, stamped on apply) |
//! | `peer/<key>/name` | `{"name"}` |
//! | `peer/<key>/addrs` | `{"addrs": ["ip:port", …]}`: where the peer last said it listens |
//! | `child/<store id>` | `{"alias", "module", "status": "active"\|"archived"}` |
//! | `invite/<blake3 of secret>` | `{"status": "valid"\|"claimed"\|"revoked", "expires_ms", "invited_by", "claimed_by"?}` |
//! | `app/<app id>` | `{"by": key}`: an app-id claim |
//!
//! Every key is last-writer-wins ([`lattice_sdk::LwwTable`]); ops are entries payloads
//! ([`lattice_sdk::encode_entries`]). `refused` lists the author-sequence ranges (inclusive; an
//! open end is `null`) of a peer's intentions that no node projects: revoking a peer at its
//! last seen sequence `cut` adds `[cut + 1, null]`; activating it again at sequence `resume`
//! closes that range at `resume`. The host reads it through the `peers` query and enforces it
//! at projection.
//!
//! Every applied change emits an event on the topic named by the key's first segment (`peer`,
//! `child`, `store`, `invite`, `app`) with payload `{"key", "value"}`. An intention that records
//! the store's first peer, revokes a peer or re-activates a revoked one also emits one `epoch`
//! event, `{"cause": "genesis"|"revocation"|"reactivation", "required": [active peer keys]}`:
//! the host then writes an epoch that those peers must acknowledge (docs/epochs.md).
#![deny(missing_docs)]

use lattice_sdk::{
    Args, Descriptor, Entry, Host, Intention, LwwTable, MethodKind, ParamKind, Prepared,
    StoreError, StoreType, decode_entries, method, optional_param, param,
};
use lattice_system_types::{
    ChildItem, ChildRecord, InviteRecord, Items, PeerItem, PeerStatus, StatusRecord, StoreInfo,
    Strategy,
};
use serde_json::{Value, json};

const TABLE: &[u8] = b"sys/";
/// Longest name or alias (bytes).
pub const MAX_NAME: usize = 256;
/// Most addresses recorded per peer.
pub const MAX_ADDRS: usize = 16;
/// Most refused ranges kept per peer.
pub const MAX_REFUSED: usize = 64;

/// The system table store type.
#[derive(Debug)]
pub struct System;

const CHILD_STATUSES: &[&str] = &["active", "archived"];
/// Pruning policies: none, keep the newest N final epochs' history, keep N ms of history.
const PRUNE_MODES: &[&str] = &["off", "keep-epochs", "keep-ms"];
const BLOB_MODES: &[&str] = &["all", "copies"];

fn table() -> LwwTable {
    LwwTable::new(TABLE)
}

fn is_id(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_app_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn invalid(what: String) -> StoreError {
    StoreError::InvalidArgument(what)
}

fn id_arg(args: &Args, name: &str) -> Result<String, StoreError> {
    let text = args.text(name)?.to_ascii_lowercase();
    if !is_id(&text) {
        return Err(invalid(format!("`{name}` must be 64 hex digits")));
    }
    Ok(text)
}

fn name_arg(args: &Args, name: &str) -> Result<String, StoreError> {
    let text = args.text(name)?;
    if text.len() > MAX_NAME {
        return Err(invalid(format!("`{name}` is longer than {MAX_NAME} bytes")));
    }
    Ok(text)
}

fn one_of(args: &Args, name: &str, allowed: &[&str]) -> Result<String, StoreError> {
    let text = args.text(name)?;
    if !allowed.contains(&text.as_str()) {
        return Err(invalid(format!(
            "`{name}` must be one of {}",
            allowed.join(", ")
        )));
    }
    Ok(text)
}

/// The peer statuses, as the table spells them (for messages).
fn peer_statuses() -> String {
    PeerStatus::ALL.map(PeerStatus::as_str).join(", ")
}

fn peer_status_arg(args: &Args) -> Result<PeerStatus, StoreError> {
    PeerStatus::parse(&args.text("status")?)
        .ok_or_else(|| invalid(format!("`status` must be one of {}", peer_statuses())))
}

fn seq_arg(args: &Args, name: &str) -> Result<Option<u64>, StoreError> {
    match args.opt_integer(name)? {
        None => Ok(None),
        Some(n) if n >= 0 => Ok(Some(n as u64)),
        Some(_) => Err(invalid(format!("`{name}` must not be negative"))),
    }
}

fn is_status_key(key: &str) -> bool {
    key.starts_with("peer/") && key.ends_with("/status")
}

/// The peer status a `peer/<k>/status` value records.
fn status_of(value: Option<&Value>) -> Option<PeerStatus> {
    value
        .and_then(|v| v.get("status"))
        .and_then(Value::as_str)
        .and_then(PeerStatus::parse)
}

/// Why a peer status change from `before` to `now` needs an epoch: the store's first peer
/// record (epoch 0), a revocation, or a revoked peer admitted again.
fn epoch_cause(
    first_peer: bool,
    before: Option<PeerStatus>,
    now: Option<PeerStatus>,
) -> Option<&'static str> {
    match (before, now) {
        _ if first_peer => Some("genesis"),
        (Some(PeerStatus::Revoked), Some(PeerStatus::Revoked)) => None,
        (_, Some(PeerStatus::Revoked)) => Some("revocation"),
        (Some(PeerStatus::Revoked), Some(_)) => Some("reactivation"),
        _ => None,
    }
}

/// Refused ranges of a status value, as `(from, to)` with `None` for an open end.
fn refused_of(status: Option<&Value>) -> Vec<(u64, Option<u64>)> {
    status
        .and_then(|v| serde_json::from_value::<StatusRecord>(v.clone()).ok())
        .map(|r| r.refused)
        .unwrap_or_default()
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, StoreError> {
    serde_json::to_value(value).map_err(|e| StoreError::Internal(e.to_string()))
}

/// The entries one command writes (a batch concatenates them).
fn entries_for(host: &dyn Host, method: &str, args: &Args) -> Result<Vec<Entry>, StoreError> {
    let t = table();
    Ok(match method {
        "set-name" => vec![(
            "name".into(),
            Some(json!({"name": name_arg(args, "name")?})),
        )],
        "set-strategy" => {
            let strategy = one_of(args, "strategy", &["independent", "inherited"])?;
            let value = if strategy == "inherited" {
                Strategy::Inherited {
                    parent: id_arg(args, "parent")?,
                }
            } else {
                Strategy::Independent
            };
            vec![("strategy".into(), Some(to_value(&value)?))]
        }
        "set-peer-status" => {
            let peer = id_arg(args, "peer")?;
            let status = peer_status_arg(args)?;
            let key = format!("peer/{peer}/status");
            let (current, _) = t.get_json(host, &key)?;
            let mut refused = refused_of(current.as_ref());
            let open = refused.last().is_some_and(|(_, to)| to.is_none());
            if status == PeerStatus::Revoked {
                let cut = seq_arg(args, "cut")?.ok_or_else(|| {
                    invalid("revoking needs `cut`: the peer's last seen sequence".into())
                })?;
                if !open {
                    refused.push((cut.saturating_add(1), None));
                }
            } else if open {
                let resume = seq_arg(args, "resume")?.ok_or_else(|| {
                    invalid(
                        "re-activating a revoked peer needs `resume`: its current sequence".into(),
                    )
                })?;
                if let Some((from, to)) = refused.pop()
                    && resume >= from
                {
                    refused.push((from, Some(resume)));
                    let _ = to;
                }
            }
            if refused.len() > MAX_REFUSED {
                refused.drain(..refused.len() - MAX_REFUSED);
            }
            let record = StatusRecord {
                status,
                refused,
                by: None,
                op: None,
            };
            vec![(key, Some(to_value(&record)?))]
        }
        "set-peer-name" => vec![(
            format!("peer/{}/name", id_arg(args, "peer")?),
            Some(json!({"name": name_arg(args, "name")?})),
        )],
        "set-peer-addrs" => {
            let peer = id_arg(args, "peer")?;
            let Some(Value::Array(addrs)) = args.get("addrs") else {
                return Err(invalid(
                    "`addrs` must be an array of \"ip:port\" texts".into(),
                ));
            };
            vec![(format!("peer/{peer}/addrs"), Some(json!({"addrs": addrs})))]
        }
        "add-child" => vec![(
            format!("child/{}", id_arg(args, "id")?),
            Some(json!({
                "alias": name_arg(args, "alias")?,
                "module": id_arg(args, "module")?,
                "status": "active",
            })),
        )],
        "set-child-status" => {
            let id = id_arg(args, "id")?;
            let status = one_of(args, "status", CHILD_STATUSES)?;
            let key = format!("child/{id}");
            let (Some(mut current), _) = t.get_json(host, &key)? else {
                return Err(invalid(format!("no child store {id}")));
            };
            current["status"] = json!(status);
            vec![(key, Some(current))]
        }
        "remove-child" => vec![(format!("child/{}", id_arg(args, "id")?), None)],
        "add-invite" => vec![(
            format!("invite/{}", id_arg(args, "hash")?),
            Some(json!({
                "status": "valid",
                "expires_ms": seq_arg(args, "expires_ms")?.ok_or_else(|| invalid("`expires_ms` is required".into()))?,
                "invited_by": id_arg(args, "invited_by")?,
            })),
        )],
        "claim-invite" | "revoke-invite" => {
            let hash = id_arg(args, "hash")?;
            let key = format!("invite/{hash}");
            let (Some(mut current), _) = t.get_json(host, &key)? else {
                return Err(invalid("unknown invite".into()));
            };
            if current["status"] != "valid" {
                return Err(invalid(format!("the invite is {}", current["status"])));
            }
            if method == "claim-invite" {
                current["status"] = json!("claimed");
                current["claimed_by"] = json!(id_arg(args, "by")?);
            } else {
                current["status"] = json!("revoked");
            }
            vec![(key, Some(current))]
        }
        "claim-app" => {
            let app = args.text("app_id")?;
            if !is_app_id(&app) {
                return Err(invalid("`app_id` is 1-64 of a-z 0-9 - .".into()));
            }
            vec![(
                format!("app/{app}"),
                Some(json!({"by": id_arg(args, "by")?})),
            )]
        }
        "release-app" => vec![(format!("app/{}", args.text("app_id")?), None)],
        "request-epoch" => {
            one_of(args, "cause", &["prune-cut"])?;
            let nonce = seq_arg(args, "nonce")?.ok_or_else(|| {
                invalid("`nonce` is required (any number new to this store)".into())
            })?;
            vec![(
                "epoch/request".into(),
                Some(json!({"cause": "prune-cut", "nonce": nonce})),
            )]
        }
        "set-prune-policy" => {
            let mode = one_of(args, "mode", PRUNE_MODES)?;
            let keep = seq_arg(args, "keep")?;
            let value = match (mode.as_str(), keep) {
                ("off", _) => json!({"mode": "off"}),
                (mode, Some(keep)) if keep >= 1 => json!({"mode": mode, "keep": keep}),
                (mode, _) => {
                    return Err(invalid(format!("`{mode}` needs `keep` (at least 1)")));
                }
            };
            vec![("prune/policy".into(), Some(value))]
        }
        "set-blob-policy" => {
            let mode = one_of(args, "mode", BLOB_MODES)?;
            let value = match (mode.as_str(), seq_arg(args, "copies")?) {
                ("all", _) => json!({"mode": "all"}),
                (_, Some(copies)) if copies >= 1 => json!({"mode": "copies", "copies": copies}),
                _ => return Err(invalid("`copies` needs `copies` (at least 1)".into())),
            };
            vec![("blob/policy".into(), Some(value))]
        }
        "batch" => {
            let Some(Value::Array(items)) = args.get("ops") else {
                return Err(invalid(
                    "`ops` must be an array of {\"method\", \"args\"}".into(),
                ));
            };
            let mut out: Vec<Entry> = Vec::new();
            for item in items {
                let (Some(Value::String(m)), Some(a)) = (item.get("method"), item.get("args"))
                else {
                    return Err(invalid(format!(
                        "batch item {item} needs `method` and `args`"
                    )));
                };
                if m == "batch" {
                    return Err(invalid("batches do not nest".into()));
                }
                for entry in entries_for(host, m, &Args::from_json(a.clone()))? {
                    out.retain(|(k, _)| *k != entry.0);
                    out.push(entry);
                }
            }
            out
        }
        other => return Err(StoreError::UnknownMethod(other.into())),
    })
}

fn reject(key: &str, why: &str) -> StoreError {
    StoreError::Rejected(format!("system entry `{key}`: {why}"))
}

fn text_field<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}

fn check_name(key: &str, value: &Value, field: &str) -> Result<(), StoreError> {
    match text_field(value, field) {
        Some(n) if n.len() <= MAX_NAME => Ok(()),
        _ => Err(reject(
            key,
            &format!("`{field}` must be text of at most {MAX_NAME} bytes"),
        )),
    }
}

fn check_id(key: &str, value: &Value, field: &str) -> Result<(), StoreError> {
    match text_field(value, field) {
        Some(id) if is_id(id) => Ok(()),
        _ => Err(reject(key, &format!("`{field}` must be 64 hex digits"))),
    }
}

/// Checks that an entry's key is one the system table knows and its value has that key's
/// shape. Deletes are allowed only for children and app claims.
fn validate(key: &str, value: Option<&Value>) -> Result<(), StoreError> {
    let parts: Vec<&str> = key.split('/').collect();
    let Some(value) = value else {
        return match parts.as_slice() {
            ["child", id] if is_id(id) => Ok(()),
            ["app", app] if is_app_id(app) => Ok(()),
            _ => Err(reject(key, "cannot be deleted")),
        };
    };
    match parts.as_slice() {
        ["name"] => check_name(key, value, "name"),
        ["strategy"] => match serde_json::from_value::<Strategy>(value.clone()) {
            Ok(Strategy::Independent) => Ok(()),
            Ok(Strategy::Inherited { parent }) if is_id(&parent) => Ok(()),
            _ => Err(reject(
                key,
                "`strategy` must be independent, or inherited with a `parent` id",
            )),
        },
        ["peer", peer, "status"] if is_id(peer) => {
            let Ok(record) = serde_json::from_value::<StatusRecord>(value.clone()) else {
                return Err(reject(
                    key,
                    &format!(
                        "`status` must be one of {} with `refused` ranges",
                        peer_statuses()
                    ),
                ));
            };
            if [&record.by, &record.op]
                .into_iter()
                .flatten()
                .any(|id| !is_id(id))
            {
                return Err(reject(key, "`by` and `op` must be 64 hex digits"));
            }
            let well_formed = record.refused.len() <= MAX_REFUSED
                && record
                    .refused
                    .iter()
                    .all(|(a, b)| b.is_none_or(|b| b >= *a));
            if well_formed {
                Ok(())
            } else {
                Err(reject(key, "`refused` ranges are [from, to|null]"))
            }
        }
        ["peer", peer, "name"] if is_id(peer) => check_name(key, value, "name"),
        ["peer", peer, "addrs"] if is_id(peer) => {
            let ok = value
                .get("addrs")
                .and_then(Value::as_array)
                .is_some_and(|a| {
                    a.len() <= MAX_ADDRS
                        && a.iter().all(|x| x.as_str().is_some_and(|t| t.len() <= 64))
                });
            if ok {
                Ok(())
            } else {
                Err(reject(key, "`addrs` is at most 16 texts"))
            }
        }
        ["child", id] if is_id(id) => match serde_json::from_value::<ChildRecord>(value.clone()) {
            Ok(child) if child.alias.len() <= MAX_NAME && is_id(&child.module) => Ok(()),
            _ => Err(reject(
                key,
                "a child is {alias (≤ 256 bytes), module (64 hex digits), status: active|archived}",
            )),
        },
        ["invite", hash] if is_id(hash) => {
            match serde_json::from_value::<InviteRecord>(value.clone()) {
                Ok(invite)
                    if is_id(&invite.invited_by)
                        && invite.claimed_by.as_deref().is_none_or(is_id) =>
                {
                    Ok(())
                }
                _ => Err(reject(
                    key,
                    "an invite is {status: valid|claimed|revoked, expires_ms, invited_by, claimed_by?}",
                )),
            }
        }
        ["app", app] if is_app_id(app) => check_id(key, value, "by"),
        ["epoch", "request"] => {
            if text_field(value, "cause") == Some("prune-cut")
                && value.get("nonce").and_then(Value::as_u64).is_some()
            {
                Ok(())
            } else {
                Err(reject(key, "an epoch request is {cause: prune-cut, nonce}"))
            }
        }
        ["prune", "policy"] => {
            let mode = text_field(value, "mode");
            let keep = value.get("keep").and_then(Value::as_u64);
            match (mode, keep) {
                (Some("off"), None) => Ok(()),
                (Some(m), Some(k)) if PRUNE_MODES.contains(&m) && m != "off" && k >= 1 => Ok(()),
                _ => Err(reject(
                    key,
                    "a prune policy is {mode: off} or {mode: keep-epochs|keep-ms, keep ≥ 1}",
                )),
            }
        }
        ["blob", "policy"] => {
            let copies = value.get("copies").and_then(Value::as_u64);
            match (text_field(value, "mode"), copies) {
                (Some("all"), None) => Ok(()),
                (Some("copies"), Some(c)) if c >= 1 => Ok(()),
                _ => Err(reject(
                    key,
                    "a blob policy is {mode: all} or {mode: copies, copies ≥ 1}",
                )),
            }
        }
        _ => Err(reject(key, "unknown key")),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// The write policy: who may write which system entry. Every writer is already a member
/// (the host projects members' intentions only); on top of that:
///
/// - `peer/<k>/name` and `peer/<k>/addrs`: only `k` itself;
/// - `peer/<k>/status`: any member for another peer; `k` itself may only leave (`revoked`),
///   go `dormant`, or (the store's creator, in its first system write) record itself `active`
///   while the table has no peer at all;
/// - `invite/<h>` with status `valid`: `invited_by` must be the writer;
/// - `app/<id>` claims: `by` must be the writer;
/// - `name`, `strategy`, `child/<id>`, invite claims and withdrawals, app releases: any member.
///
/// The checks read the writer (from the signed intention) and, for a self-activation, whether
/// any peer is recorded (only the creator's first write, causally before every other peer
/// record, can pass); they give the same answer on every peer.
fn authorize(
    host: &dyn Host,
    key: &str,
    value: Option<&Value>,
    author: &str,
) -> Result<(), StoreError> {
    let parts: Vec<&str> = key.split('/').collect();
    let field = |name: &str| value.and_then(|v| text_field(v, name));
    match parts.as_slice() {
        ["peer", peer, "name" | "addrs"] if *peer != author => Err(reject(
            key,
            "only the peer itself may set its name and addresses",
        )),
        ["peer", peer, "status"] if *peer == author => match field("status") {
            Some("revoked" | "dormant") => Ok(()),
            Some("active") if table().list_json(host, "peer/", 1)?.is_empty() => Ok(()),
            _ => Err(reject(
                key,
                "a peer cannot re-activate or invite itself; another member must",
            )),
        },
        ["invite", _]
            if field("status") == Some("valid") && field("invited_by") != Some(author) =>
        {
            Err(reject(
                key,
                "`invited_by` must be the member issuing the invite",
            ))
        }
        ["app", _] if value.is_some() && field("by") != Some(author) => {
            Err(reject(key, "`by` must be the member claiming the app id"))
        }
        _ => Ok(()),
    }
}

/// Records who wrote a peer status, and in which intention, in the value itself (the host
/// needs both to settle concurrent revocations).
fn stamp(key: &str, value: Option<&mut Value>, author: &str, op: &str) {
    if key.starts_with("peer/")
        && key.ends_with("/status")
        && let Some(Value::Object(map)) = value
    {
        map.insert("by".into(), json!(author));
        map.insert("op".into(), json!(op));
    }
}

fn peer_item(host: &dyn Host, peer: &str) -> Result<PeerItem, StoreError> {
    let t = table();
    let (status, conflicted) = t.get_json(host, &format!("peer/{peer}/status"))?;
    let (name, _) = t.get_json(host, &format!("peer/{peer}/name"))?;
    let (addrs, _) = t.get_json(host, &format!("peer/{peer}/addrs"))?;
    let record = status.and_then(|s| serde_json::from_value::<StatusRecord>(s).ok());
    Ok(PeerItem {
        peer: peer.to_string(),
        status: record.as_ref().map(|r| r.status),
        name: name
            .as_ref()
            .and_then(|n| text_field(n, "name"))
            .map(str::to_string),
        addrs: addrs
            .as_ref()
            .and_then(|a| a.get("addrs"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
        refused: record
            .as_ref()
            .map(|r| r.refused.clone())
            .unwrap_or_default(),
        conflicted,
        by: record.as_ref().and_then(|r| r.by.clone()),
        op: record.and_then(|r| r.op),
    })
}

impl StoreType for System {
    fn describe() -> Descriptor {
        use MethodKind::{Command, Query};
        use ParamKind::{Integer, Json, Text};
        let id = |name: &str, what: &str| param(name, Text, what);
        Descriptor {
            name: "system".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "a store's system table: peers, child stores, name, peer strategy, invites, app claims".into(),
            methods: vec![
                method("set-name", Command, "name the store", vec![param("name", Text, "the name")], "{}"),
                method("set-strategy", Command, "where the store's peer set comes from",
                    vec![param("strategy", Text, "independent | inherited"),
                         optional_param("parent", Text, "parent store id (inherited)")], "{}"),
                method("set-peer-status", Command, "set a peer's status",
                    vec![id("peer", "peer key (hex)"),
                         param("status", Text, "invited | active | dormant | revoked"),
                         optional_param("cut", Integer, "revoking: the peer's last sequence still projected"),
                         optional_param("resume", Integer, "re-activating: the peer's current sequence")], "{}"),
                method("set-peer-name", Command, "name a peer",
                    vec![id("peer", "peer key (hex)"), param("name", Text, "the name")], "{}"),
                method("set-peer-addrs", Command, "record where a peer listens",
                    vec![id("peer", "peer key (hex)"), param("addrs", ParamKind::TextList, "[\"ip:port\"]")], "{}"),
                method("add-child", Command, "declare a child store",
                    vec![id("id", "child store id"), param("alias", Text, "its name here"),
                         id("module", "its module hash")], "{}"),
                method("set-child-status", Command, "archive or re-activate a child store",
                    vec![id("id", "child store id"), param("status", Text, "active | archived")], "{}"),
                method("remove-child", Command, "forget a child store", vec![id("id", "child store id")], "{}"),
                method("add-invite", Command, "record an invite by the hash of its secret",
                    vec![id("hash", "blake3 of the secret"), param("expires_ms", Integer, "expiry, ms since epoch"),
                         id("invited_by", "inviter key")], "{}"),
                method("claim-invite", Command, "mark a valid invite used",
                    vec![id("hash", "blake3 of the secret"), id("by", "joiner key")], "{}"),
                method("revoke-invite", Command, "withdraw a valid invite", vec![id("hash", "blake3 of the secret")], "{}"),
                method("claim-app", Command, "claim an app id for this store",
                    vec![param("app_id", Text, "the app id"), id("by", "claimer key")], "{}"),
                method("release-app", Command, "release an app id", vec![param("app_id", Text, "the app id")], "{}"),
                method("request-epoch", Command, "ask for an epoch now (a pruning cut)",
                    vec![param("cause", Text, "prune-cut"),
                         param("nonce", Integer, "any number new to this store")], "{}"),
                method("set-prune-policy", Command, "when history below final epochs is deleted",
                    vec![param("mode", Text, "off | keep-epochs | keep-ms"),
                         optional_param("keep", Integer, "epochs kept, or ms of history kept")], "{}"),
                method("set-blob-policy", Command, "which members keep the blobs the state references",
                    vec![param("mode", Text, "all | copies"),
                         optional_param("copies", Integer, "with copies: how many members keep each blob")], "{}"),
                method("batch", Command, "several of the above as one intention",
                    vec![param("ops", Json, "[{\"method\", \"args\"}]")], "{}"),
                method("peers", Query, "every peer with status, name and refused ranges", vec![],
                    "{\"items\": [{\"peer\", \"status\", \"name\", \"addrs\", \"refused\", \"conflicted\"}]}"),
                method("peer", Query, "one peer", vec![id("peer", "peer key (hex)")],
                    "{\"peer\", \"status\", \"name\", \"refused\", \"conflicted\"}"),
                method("children", Query, "declared child stores", vec![],
                    "{\"items\": [{\"id\", \"alias\", \"module\", \"status\", \"conflicted\"}]}"),
                method("store", Query, "name and peer strategy", vec![], "{\"name\", \"strategy\", \"parent\"}"),
                method("invite", Query, "an invite by hash", vec![id("hash", "blake3 of the secret")],
                    "{\"status\", \"expires_ms\", \"invited_by\", \"claimed_by\"} | null"),
                method("apps", Query, "app-id claims", vec![], "{\"items\": [{\"app_id\", \"by\"}]}"),
                method("blob-policy", Query, "which members keep referenced blobs", vec![],
                    "{\"mode\": \"all\" | \"copies\", \"copies\"}"),
                method("prune-policy", Query, "when history is pruned", vec![],
                    "{\"mode\": \"off\" | \"keep-epochs\" | \"keep-ms\", \"keep\"}"),
            ],
        }
    }

    fn prepare(host: &dyn Host, method: &str, args: &Args) -> Result<Prepared, StoreError> {
        let entries = entries_for(host, method, args)?;
        for (k, v) in &entries {
            validate(k, v.as_ref()).map_err(|e| match e {
                StoreError::Rejected(m) => StoreError::InvalidArgument(m),
                other => other,
            })?;
        }
        table().prepare_entries(host, &entries)
    }

    fn apply(host: &mut dyn Host, op: &Intention) -> Result<(), StoreError> {
        let mut entries = decode_entries(&op.ops)?;
        let author = hex(&op.author);
        for (key, value) in &mut entries {
            validate(key, value.as_ref())?;
            authorize(host, key, value.as_ref(), &author)?;
            stamp(key, value.as_mut(), &author, &hex(&op.hash));
        }
        let t = table();
        let first_peer = t.list_json(host, "peer/", 1)?.is_empty();
        let mut cause = None;
        for entry in &entries {
            let before = if is_status_key(&entry.0) {
                status_of(t.get_json(host, &entry.0)?.0.as_ref())
            } else {
                None
            };
            if let Some(now) = t.apply_entry(host, entry, op)? {
                if is_status_key(&entry.0) {
                    cause = cause.or(epoch_cause(first_peer, before, status_of(now.as_ref())));
                }
                if entry.0 == "epoch/request" {
                    cause = cause.or(Some("prune-cut"));
                }
                let topic = match entry.0.split('/').next() {
                    Some("name" | "strategy") => "store",
                    Some(first) => first,
                    None => "store",
                };
                let event = json!({"key": entry.0, "value": now});
                host.emit(topic, event.to_string().as_bytes());
            }
        }
        if let Some(cause) = cause {
            let mut required = Vec::new();
            for (key, value, _) in t.list_json(host, "peer/", usize::MAX)? {
                if let ["peer", peer, "status"] = key.split('/').collect::<Vec<_>>().as_slice()
                    && status_of(Some(&value)) == Some(PeerStatus::Active)
                {
                    required.push(peer.to_string());
                }
            }
            let event = json!({"cause": cause, "required": required});
            host.emit("epoch", event.to_string().as_bytes());
        }
        Ok(())
    }

    fn query(host: &dyn Host, method: &str, args: &Args) -> Result<Value, StoreError> {
        let t = table();
        match method {
            "peers" => {
                let mut items = Vec::new();
                for (key, _, _) in t.list_json(host, "peer/", usize::MAX)? {
                    if let ["peer", peer, "status"] = key.split('/').collect::<Vec<_>>().as_slice()
                    {
                        items.push(peer_item(host, peer)?);
                    }
                }
                to_value(&Items { items })
            }
            "peer" => to_value(&peer_item(host, &id_arg(args, "peer")?)?),
            "children" => {
                let mut items = Vec::new();
                for (key, v, conflicted) in t.list_json(host, "child/", usize::MAX)? {
                    let record = serde_json::from_value::<ChildRecord>(v)
                        .map_err(|e| StoreError::Internal(format!("stored `{key}`: {e}")))?;
                    items.push(ChildItem {
                        id: key.trim_start_matches("child/").to_string(),
                        record,
                        conflicted,
                    });
                }
                to_value(&Items { items })
            }
            "store" => {
                let (name, _) = t.get_json(host, "name")?;
                let (strategy, _) = t.get_json(host, "strategy")?;
                to_value(&StoreInfo {
                    name: name
                        .as_ref()
                        .and_then(|n| text_field(n, "name"))
                        .map(str::to_string),
                    strategy: strategy
                        .and_then(|s| serde_json::from_value::<Strategy>(s).ok())
                        .unwrap_or_default(),
                })
            }
            "invite" => Ok(t
                .get_json(host, &format!("invite/{}", id_arg(args, "hash")?))?
                .0
                .unwrap_or(Value::Null)),
            "apps" => {
                let items: Vec<Value> = t
                    .list_json(host, "app/", usize::MAX)?
                    .into_iter()
                    .map(|(key, v, _)| json!({"app_id": key.trim_start_matches("app/"), "by": v["by"]}))
                    .collect();
                Ok(json!({"items": items}))
            }
            "blob-policy" => Ok(t
                .get_json(host, "blob/policy")?
                .0
                .unwrap_or_else(|| json!({"mode": "all"}))),
            "prune-policy" => Ok(t
                .get_json(host, "prune/policy")?
                .0
                .unwrap_or_else(|| json!({"mode": "off"}))),
            other => Err(StoreError::UnknownMethod(other.into())),
        }
    }
}

lattice_sdk::export_store!(System);

#[cfg(test)]
mod tests {
    use lattice_sdk::{Hlc, MemoryHost, encode_entries};

    use super::*;

    fn call(host: &mut MemoryHost, n: u8, method: &str, args: Value) -> Result<(), StoreError> {
        let prepared = System::prepare(host, method, &Args::from_json(args))?;
        let op = Intention {
            hash: vec![n; 32],
            author: vec![1; 32],
            hlc: Hlc {
                wall_ms: u64::from(n),
                counter: 0,
            },
            deps: prepared.deps.clone(),
            ops: prepared.ops.clone(),
        };
        System::apply(host, &op)
    }

    fn query(host: &MemoryHost, method: &str, args: Value) -> Result<Value, StoreError> {
        System::query(host, method, &Args::from_json(args))
    }

    const P: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    #[test]
    fn the_blob_policy_is_all_until_set_and_checked() -> Result<(), StoreError> {
        let mut host = MemoryHost::new();
        assert_eq!(
            query(&host, "blob-policy", json!({}))?,
            json!({"mode": "all"})
        );
        call(
            &mut host,
            1,
            "set-blob-policy",
            json!({"mode": "copies", "copies": 2}),
        )?;
        assert_eq!(
            query(&host, "blob-policy", json!({}))?,
            json!({"mode": "copies", "copies": 2})
        );
        for bad in [
            json!({"mode": "copies"}),
            json!({"mode": "copies", "copies": 0}),
            json!({"mode": "some"}),
        ] {
            assert!(matches!(
                System::prepare(&host, "set-blob-policy", &Args::from_json(bad)),
                Err(StoreError::InvalidArgument(_))
            ));
        }
        Ok(())
    }

    #[test]
    fn a_prune_cut_asks_for_an_epoch_and_the_policy_is_kept() -> Result<(), StoreError> {
        let mut host = MemoryHost::new();
        call(
            &mut host,
            1,
            "set-peer-status",
            json!({"peer": P, "status": "active"}),
        )?;
        call(
            &mut host,
            2,
            "request-epoch",
            json!({"cause": "prune-cut", "nonce": 7}),
        )?;
        let last_epoch: Value = host
            .events
            .iter()
            .rev()
            .find(|(topic, _)| topic == "epoch")
            .map(|(_, payload)| serde_json::from_slice(payload))
            .transpose()
            .map_err(|e| StoreError::Internal(e.to_string()))?
            .ok_or_else(|| StoreError::Internal("no epoch event".into()))?;
        assert_eq!(last_epoch, json!({"cause": "prune-cut", "required": [P]}));
        assert!(matches!(
            System::prepare(
                &host,
                "request-epoch",
                &Args::from_json(json!({"cause": "other", "nonce": 1}))
            ),
            Err(StoreError::InvalidArgument(_))
        ));

        assert_eq!(
            query(&host, "prune-policy", json!({}))?,
            json!({"mode": "off"})
        );
        call(
            &mut host,
            3,
            "set-prune-policy",
            json!({"mode": "keep-epochs", "keep": 2}),
        )?;
        assert_eq!(
            query(&host, "prune-policy", json!({}))?,
            json!({"mode": "keep-epochs", "keep": 2})
        );
        for bad in [
            json!({"mode": "keep-ms"}),
            json!({"mode": "keep-ms", "keep": 0}),
            json!({"mode": "sometimes"}),
        ] {
            assert!(matches!(
                System::prepare(&host, "set-prune-policy", &Args::from_json(bad)),
                Err(StoreError::InvalidArgument(_))
            ));
        }
        Ok(())
    }

    #[test]
    fn revoke_then_reactivate_keeps_the_refused_range() -> Result<(), StoreError> {
        let mut host = MemoryHost::new();
        call(
            &mut host,
            1,
            "set-peer-status",
            json!({"peer": P, "status": "active"}),
        )?;
        call(
            &mut host,
            2,
            "set-peer-status",
            json!({"peer": P, "status": "revoked", "cut": 5}),
        )?;
        assert_eq!(
            query(&host, "peer", json!({"peer": P}))?["refused"],
            json!([[6, null]])
        );
        assert!(
            call(
                &mut host,
                3,
                "set-peer-status",
                json!({"peer": P, "status": "active"})
            )
            .is_err()
        );
        call(
            &mut host,
            3,
            "set-peer-status",
            json!({"peer": P, "status": "active", "resume": 9}),
        )?;
        let peer = query(&host, "peer", json!({"peer": P}))?;
        assert_eq!(peer["status"], "active");
        assert_eq!(peer["refused"], json!([[6, 9]]));
        // Each change emitted its `peer` event, and each asked for an epoch: the first peer
        // record, the revocation (nobody active left to acknowledge), the re-activation.
        let epochs: Vec<Value> = host
            .events
            .iter()
            .filter(|(topic, _)| topic == "epoch")
            .map(|(_, payload)| serde_json::from_slice(payload))
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        assert_eq!(
            epochs,
            vec![
                json!({"cause": "genesis", "required": [P]}),
                json!({"cause": "revocation", "required": []}),
                json!({"cause": "reactivation", "required": [P]}),
            ]
        );
        assert_eq!(host.events.len(), 6);
        // Renaming a peer asks for no epoch.
        call(
            &mut host,
            4,
            "set-peer-name",
            json!({"peer": "0101010101010101010101010101010101010101010101010101010101010101", "name": "x"}),
        )?;
        assert_eq!(host.events.len(), 7);
        Ok(())
    }

    #[test]
    fn children_batches_and_invites() -> Result<(), StoreError> {
        let mut host = MemoryHost::new();
        call(
            &mut host,
            1,
            "batch",
            json!({"ops": [
                {"method": "set-name", "args": {"name": "home"}},
                {"method": "add-child", "args": {"id": C, "alias": "notes", "module": P}},
            ]}),
        )?;
        assert_eq!(query(&host, "store", json!({}))?["name"], "home");
        call(
            &mut host,
            2,
            "set-child-status",
            json!({"id": C, "status": "archived"}),
        )?;
        assert_eq!(
            query(&host, "children", json!({}))?["items"][0]["status"],
            "archived"
        );
        // The tests' writer is key 0101…: an invite names its issuer.
        call(
            &mut host,
            3,
            "add-invite",
            json!({"hash": C, "expires_ms": 10, "invited_by": "01".repeat(32)}),
        )?;
        call(&mut host, 4, "claim-invite", json!({"hash": C, "by": P}))?;
        assert_eq!(
            query(&host, "invite", json!({"hash": C}))?["status"],
            "claimed"
        );
        assert!(call(&mut host, 5, "claim-invite", json!({"hash": C, "by": P})).is_err());
        Ok(())
    }

    fn apply_as(
        host: &mut MemoryHost,
        n: u8,
        author: &str,
        entries: Vec<(String, Option<Value>)>,
    ) -> Result<(), StoreError> {
        let op = Intention {
            hash: vec![n; 32],
            author: (0..32)
                .map(|i| u8::from_str_radix(&author[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect(),
            hlc: Hlc {
                wall_ms: u64::from(n),
                counter: 0,
            },
            deps: vec![],
            ops: encode_entries(&entries),
        };
        System::apply(host, &op)
    }

    #[test]
    fn the_write_policy_holds_against_a_hostile_member() -> Result<(), StoreError> {
        let mut host = MemoryHost::new();
        let status = |s: &str| Some(json!({"status": s, "refused": []}));
        // The creator records itself active in the first write; a second self-activation fails.
        apply_as(
            &mut host,
            1,
            C,
            vec![(format!("peer/{C}/status"), status("active"))],
        )?;
        apply_as(
            &mut host,
            2,
            C,
            vec![(format!("peer/{P}/status"), status("active"))],
        )?;
        let stamped = query(&host, "peer", json!({"peer": P}))?;
        assert_eq!(stamped["by"], C);
        assert_eq!(stamped["op"], "02".repeat(32));
        // P (a member) cannot rename or re-address C, nor re-activate itself after leaving.
        for entries in [
            vec![(format!("peer/{C}/name"), Some(json!({"name": "evil"})))],
            vec![(format!("peer/{C}/addrs"), Some(json!({"addrs": []})))],
            vec![(format!("peer/{P}/status"), status("active"))],
            vec![(
                format!("invite/{C}"),
                Some(json!({"status": "valid", "expires_ms": 5, "invited_by": C})),
            )],
            vec![("app/x".to_string(), Some(json!({"by": C})))],
        ] {
            assert!(
                matches!(
                    apply_as(&mut host, 3, P, entries.clone()),
                    Err(StoreError::Rejected(_))
                ),
                "{entries:?}"
            );
        }
        // What P may do: name itself, leave, invite as itself, revoke another peer.
        apply_as(
            &mut host,
            4,
            P,
            vec![(format!("peer/{P}/name"), Some(json!({"name": "p"})))],
        )?;
        apply_as(
            &mut host,
            5,
            P,
            vec![(format!("peer/{C}/status"), status("revoked"))],
        )?;
        apply_as(
            &mut host,
            6,
            P,
            vec![(format!("peer/{P}/status"), status("revoked"))],
        )?;
        assert!(
            apply_as(
                &mut host,
                7,
                P,
                vec![(format!("peer/{P}/status"), status("active"))]
            )
            .is_err()
        );
        Ok(())
    }

    #[test]
    fn apply_rejects_unknown_keys_and_bad_shapes() {
        let mut host = MemoryHost::new();
        for entries in [
            vec![("bogus".to_string(), Some(json!(1)))],
            vec![(
                format!("peer/{P}/status"),
                Some(json!({"status": "boss", "refused": []})),
            )],
            vec![(
                format!("peer/{P}/status"),
                Some(json!({"status": "active", "refused": [[5, 2]]})),
            )],
            vec![("name".to_string(), None)],
            vec![(
                format!("child/{C}"),
                Some(json!({"alias": "x", "module": "zz", "status": "active"})),
            )],
        ] {
            let op = Intention {
                hash: vec![9; 32],
                author: vec![1; 32],
                hlc: Hlc {
                    wall_ms: 1,
                    counter: 0,
                },
                deps: vec![],
                ops: encode_entries(&entries),
            };
            assert!(
                matches!(System::apply(&mut host, &op), Err(StoreError::Rejected(_))),
                "{entries:?}"
            );
        }
        assert!(host.events.is_empty());
    }
}
