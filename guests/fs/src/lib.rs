//! The filesystem store type (`fs`): a tree of files, directories and symbolic links that
//! converges to the same tree on every peer, whatever order writes arrive in. File contents
//! up to [`MAX_INLINE`] bytes live in the state; larger ones are blobs of the store
//! (`lattice:store/blobs`), put by `prepare` from the call's bytes or put beforehand through
//! the blob API and named by hash.
//!
//! Commands (paths are `/`-separated, relative to the store's root): `write {path, data |
//! blob + size, mode?}` (creates or replaces a file), `mkdir {path, mode?}`, `symlink {path,
//! target}`, `rename {from, to}` (replaces a file or empty directory at `to`), `unlink
//! {path}`, `rmdir {path}` (empty only), `chmod {path, mode}`, `resolve {path}` (keeps the
//! winner of concurrent writes, dropping the conflict copies). Queries: `stat {path}`,
//! `readdir {path}`, `read {path, offset?, length?}`, `readlink {path}`.
//!
//! Errors start with a POSIX name so a mount can answer with the matching errno: `ENOENT`,
//! `EEXIST`, `ENOTDIR`, `EISDIR`, `ENOTEMPTY`, `EINVAL`, `EROFS`.
//!
//! ## How concurrent edits converge (no silent loss)
//!
//! Every entry has an id (from the intention that created it) and two last-writer-wins
//! registers that keep every concurrent head: its *location* (parent, name, kind, mode, or
//! removed) and, for files and symlinks, its *content*. Each write cites the heads it saw.
//!
//! - Two writes to one file at once: the later (HLC, then author) keeps the name; every other
//!   head stays readable beside it as `name.conflict-<author>-<ms>`, until someone writes the
//!   file again (or calls `resolve`).
//! - Two entries given the same name at once (two creates, or a rename onto a name another
//!   peer just used): the later placement keeps the name, the other shows as
//!   `name.conflict-<author>-<ms>`.
//! - Removal against a concurrent edit or rename of the same entry: the entry stays (a write
//!   also writes the location it saw, so it is a concurrent head beside the removal).
//! - A directory removed while a peer adds or edits something inside it: the directory stays
//!   visible as long as its subtree holds anything present.
//! - Two directories moved into each other at once (a rename cycle): the entries of the
//!   cycle are shown at the root under their names.
//! - Renames of one entry to two places at once: the later placement wins (the entry exists
//!   once, nothing is lost).
#![deny(missing_docs)]

pub mod model;
pub mod tree;

use lattice_sdk::{
    Args, BlobError, Descriptor, Host, Intention, MethodKind, ParamKind, Prepared, StoreError,
    StoreType, bytes_json, method, optional_param, param, read_blob,
};
use serde_json::{Value, json};

use model::{Content, FsOp, Id, Kind, Loc, ROOT, check_name, created_id, decode_ops, encode_ops};
use tree::{Item, Target, contents, locs};

/// Content up to this many bytes is kept in the state; larger content is a blob.
pub const MAX_INLINE: usize = 64 << 10;
/// Largest content a call carries in its arguments (put larger files as blobs first).
pub const MAX_CALL_CONTENT: usize = 8 << 20;
/// Most ops in one intention.
pub const MAX_OPS: usize = 64;
/// Largest read one `read` query answers (bytes).
pub const MAX_READ: u64 = 8 << 20;

/// The filesystem store type.
#[derive(Debug)]
pub struct FsStore;

fn err(code: &str, path: &str) -> StoreError {
    StoreError::InvalidArgument(format!("{code}: {path}"))
}

/// A path's components (empty: the root).
fn components(path: &str) -> Result<Vec<&[u8]>, StoreError> {
    let parts: Vec<&[u8]> = path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::as_bytes)
        .collect();
    for part in &parts {
        check_name(part).map_err(|_| err("EINVAL", path))?;
    }
    if parts.len() > tree::MAX_DEPTH {
        return Err(err("EINVAL", path));
    }
    Ok(parts)
}

/// What a path names: `None` for the root.
fn resolve(host: &dyn Host, path: &str) -> Result<Option<Item>, StoreError> {
    let parts = components(path)?;
    let mut dir = ROOT;
    let mut found = None;
    for (i, part) in parts.iter().enumerate() {
        let item = tree::lookup(host, &dir, part)?.ok_or_else(|| err("ENOENT", path))?;
        if i + 1 < parts.len() {
            match (&item.target, item.placed.loc.kind) {
                (Target::Entry(id), Kind::Dir) => dir = *id,
                _ => return Err(err("ENOTDIR", path)),
            }
        }
        found = Some(item);
    }
    Ok(found)
}

/// The directory a new entry at `path` goes into, and its name.
fn parent_and_name<'a>(host: &dyn Host, path: &'a str) -> Result<(Id, &'a [u8]), StoreError> {
    let parts = components(path)?;
    let Some((name, dirs)) = parts.split_last() else {
        return Err(err("EEXIST", path));
    };
    let mut dir = ROOT;
    for part in dirs {
        let item = tree::lookup(host, &dir, part)?.ok_or_else(|| err("ENOENT", path))?;
        match (&item.target, item.placed.loc.kind) {
            (Target::Entry(id), Kind::Dir) => dir = *id,
            _ => return Err(err("ENOTDIR", path)),
        }
    }
    Ok((dir, name))
}

fn entry_of(item: &Item, path: &str) -> Result<Id, StoreError> {
    match item.target {
        Target::Entry(id) => Ok(id),
        Target::Copy(..) => Err(err("EROFS", path)),
    }
}

fn mode_arg(args: &Args, default: u32) -> Result<u32, StoreError> {
    match args.opt_integer("mode")? {
        None => Ok(default),
        Some(m) if (0..=0o7777).contains(&m) => Ok(m as u32),
        Some(_) => Err(StoreError::InvalidArgument(
            "`mode` must be between 0 and 0o7777".into(),
        )),
    }
}

/// The content a `write` call carries: its bytes (a blob past [`MAX_INLINE`]), or a blob
/// put beforehand.
fn content_arg(host: &dyn Host, args: &Args) -> Result<Content, StoreError> {
    match (args.opt_bytes("data")?, args.opt_text("blob")?) {
        (Some(data), None) => {
            if data.len() > MAX_CALL_CONTENT {
                return Err(StoreError::InvalidArgument(format!(
                    "`data` is {} bytes; put files over {MAX_CALL_CONTENT} bytes as a blob and pass `blob` and `size`",
                    data.len()
                )));
            }
            if data.len() <= MAX_INLINE {
                return Ok(Content::Inline(data));
            }
            let hash: [u8; 32] = host
                .blob_put(&data)
                .try_into()
                .map_err(|_| StoreError::Internal("the host named a blob oddly".into()))?;
            Ok(Content::Blob(hash, data.len() as u64))
        }
        (None, Some(hex)) => {
            let hash = lattice_sdk::json_bytes(&json!({ "hex": hex }))
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    StoreError::InvalidArgument("`blob` must be 64 hex characters".into())
                })?;
            let size = args
                .opt_integer("size")?
                .and_then(|s| u64::try_from(s).ok())
                .ok_or_else(|| StoreError::InvalidArgument("`blob` needs `size` (bytes)".into()))?;
            Ok(Content::Blob(hash, size))
        }
        _ => Err(StoreError::InvalidArgument(
            "give the content as `data`, or as `blob` (hash) and `size`".into(),
        )),
    }
}

/// The deps that make an op on `ids` supersede what its author saw: the heads of their
/// location and content registers.
fn deps_of(host: &dyn Host, ids: &[Id]) -> Result<Vec<Vec<u8>>, StoreError> {
    let keys: Vec<&[u8]> = ids.iter().map(|id| id.as_slice()).collect();
    let mut deps = locs().deps_for(host, &keys)?;
    deps.extend(contents().deps_for(host, &keys)?);
    deps.sort();
    deps.dedup();
    Ok(deps)
}

fn prepared(host: &dyn Host, ops: Vec<FsOp>, touched: &[Id]) -> Result<Prepared, StoreError> {
    let ids: Vec<Id> = touched.iter().copied().filter(|id| *id != ROOT).collect();
    Ok(Prepared {
        deps: deps_of(host, &ids)?,
        ..Prepared::ops(encode_ops(&ops))
    })
}

/// A create of `kind` at `path` (which must not exist).
fn create(
    host: &dyn Host,
    path: &str,
    kind: Kind,
    mode: u32,
    content: Option<Content>,
) -> Result<Prepared, StoreError> {
    let (parent, name) = parent_and_name(host, path)?;
    if tree::lookup(host, &parent, name)?.is_some() {
        return Err(err("EEXIST", path));
    }
    let loc = Loc {
        parent,
        kind,
        mode,
        removed: false,
        name: name.to_vec(),
    };
    prepared(host, vec![FsOp::Create { loc, content }], &[parent])
}

fn prepare_write(host: &dyn Host, args: &Args) -> Result<Prepared, StoreError> {
    let path = args.text("path")?;
    let content = content_arg(host, args)?;
    let (parent, name) = parent_and_name(host, &path)?;
    match tree::lookup(host, &parent, name)? {
        None => create(
            host,
            &path,
            Kind::File,
            mode_arg(args, 0o644)?,
            Some(content),
        ),
        Some(item) => {
            let id = entry_of(&item, &path)?;
            if item.placed.loc.kind != Kind::File {
                return Err(err("EISDIR", &path));
            }
            let mut loc = item.placed.loc.clone();
            loc.mode = mode_arg(args, loc.mode)?;
            loc.removed = false;
            prepared(host, vec![FsOp::Write { id, loc, content }], &[id])
        }
    }
}

/// A removal of what `path` names (`dir`: it must be an empty directory; else not one).
fn prepare_remove(host: &dyn Host, args: &Args, dir: bool) -> Result<Prepared, StoreError> {
    let path = args.text("path")?;
    let item = resolve(host, &path)?.ok_or_else(|| err("EINVAL", &path))?;
    let id = entry_of(&item, &path)?;
    match (item.placed.loc.kind == Kind::Dir, dir) {
        (true, false) => return Err(err("EISDIR", &path)),
        (false, true) => return Err(err("ENOTDIR", &path)),
        (true, true) if !tree::list(host, &id)?.is_empty() => {
            return Err(err("ENOTEMPTY", &path));
        }
        _ => {}
    }
    let mut loc = item.placed.loc.clone();
    loc.removed = true;
    prepared(host, vec![FsOp::Place { id, loc }], &[id])
}

fn prepare_rename(host: &dyn Host, args: &Args) -> Result<Prepared, StoreError> {
    let from = args.text("from")?;
    let to = args.text("to")?;
    let item = resolve(host, &from)?.ok_or_else(|| err("EINVAL", &from))?;
    let id = entry_of(&item, &from)?;
    let (parent, name) = parent_and_name(host, &to)?;
    let is_dir = item.placed.loc.kind == Kind::Dir;
    if is_dir && tree::is_within(host, &parent, &id)? {
        return Err(err("EINVAL", &to));
    }
    let mut ops = Vec::new();
    let mut touched = vec![id, parent];
    if let Some(there) = tree::lookup(host, &parent, name)? {
        let other = entry_of(&there, &to)?;
        if other == id {
            return Err(err("EEXIST", &to));
        }
        match (there.placed.loc.kind == Kind::Dir, is_dir) {
            (true, false) => return Err(err("EISDIR", &to)),
            (false, true) => return Err(err("ENOTDIR", &to)),
            (true, true) if !tree::list(host, &other)?.is_empty() => {
                return Err(err("ENOTEMPTY", &to));
            }
            _ => {}
        }
        let mut gone = there.placed.loc.clone();
        gone.removed = true;
        ops.push(FsOp::Place {
            id: other,
            loc: gone,
        });
        touched.push(other);
    }
    let mut loc = item.placed.loc.clone();
    loc.parent = parent;
    loc.name = name.to_vec();
    loc.removed = false;
    ops.push(FsOp::Place { id, loc });
    prepared(host, ops, &touched)
}

fn prepare_chmod(host: &dyn Host, args: &Args) -> Result<Prepared, StoreError> {
    let path = args.text("path")?;
    let item = resolve(host, &path)?.ok_or_else(|| err("EINVAL", &path))?;
    let id = entry_of(&item, &path)?;
    let mut loc = item.placed.loc.clone();
    loc.mode = mode_arg(args, loc.mode)?;
    loc.removed = false;
    prepared(host, vec![FsOp::Place { id, loc }], &[id])
}

fn prepare_resolve(host: &dyn Host, args: &Args) -> Result<Prepared, StoreError> {
    let path = args.text("path")?;
    let item = resolve(host, &path)?.ok_or_else(|| err("EINVAL", &path))?;
    let id = entry_of(&item, &path)?;
    let (content, _) = tree::content_of(host, &item)?.ok_or_else(|| err("EISDIR", &path))?;
    let mut loc = item.placed.loc.clone();
    loc.removed = false;
    prepared(host, vec![FsOp::Write { id, loc, content }], &[id])
}

/// Applies one op of intention `op` (the `index`th).
fn apply_one(
    host: &mut dyn Host,
    op: &Intention,
    index: usize,
    fs_op: FsOp,
) -> Result<(), StoreError> {
    let (id, loc, content) = match fs_op {
        FsOp::Create { loc, content } => (created_id(&op.hash, index), loc, content),
        FsOp::Write { id, loc, content } => (id, loc, Some(content)),
        FsOp::Place { id, loc } => (id, loc, None),
    };
    // The parent must exist and be a directory (an honest writer cites it, so it is here).
    if loc.parent != ROOT {
        match tree::placed(host, &loc.parent)? {
            Some(p) if p.loc.kind == Kind::Dir => {}
            _ => {
                return Err(StoreError::Rejected(
                    "the parent is not a directory here".into(),
                ));
            }
        }
    }
    if let Some(existing) = tree::placed(host, &id)?
        && existing.loc.kind != loc.kind
    {
        return Err(StoreError::Rejected("an entry's kind never changes".into()));
    }
    if loc.kind == Kind::Dir && loc.parent == id {
        return Err(StoreError::Rejected(
            "a directory cannot hold itself".into(),
        ));
    }
    if let Some(content) = content {
        let encoded = content.encode();
        if let Some((_, removed)) = contents().write_removing(host, &id, Some(&encoded), op)? {
            if let Some(hash) = content.blob() {
                host.blob_add_ref(hash);
            }
            for head in removed {
                if let Some(v) = head.value
                    && let Ok(Content::Blob(hash, _)) = Content::decode(&v)
                {
                    host.blob_drop_ref(&hash);
                }
            }
        }
    }
    tree::relocate(host, &id, &loc, op)
}

/// The JSON a stat or listing shows for `item`.
fn item_json(host: &dyn Host, item: &Item) -> Result<Value, StoreError> {
    let loc = &item.placed.loc;
    let placed = &item.placed.head;
    let (size, blob, mtime, rev) = match tree::content_of(host, item)? {
        Some((content, head)) => (
            content.size(),
            content.blob().map(|h| model::hex(h)),
            head.hlc.wall_ms.max(placed.hlc.wall_ms),
            revision(&[&head.hash, &placed.hash]),
        ),
        None => (0, None, placed.hlc.wall_ms, revision(&[&placed.hash])),
    };
    let (id, copy) = match &item.target {
        Target::Entry(id) => (id, false),
        Target::Copy(id, _) => (id, true),
    };
    let conflicted = !copy && loc.kind != Kind::Dir && contents().heads(host, id)?.len() > 1;
    Ok(json!({
        "name": String::from_utf8_lossy(&item.name),
        "kind": loc.kind.name(),
        "mode": if copy { loc.mode & 0o7555 } else { loc.mode },
        "size": size,
        "mtime_ms": mtime,
        "rev": rev,
        "id": model::id_hex(id),
        "blob": blob,
        "conflicted": conflicted,
        "conflict_copy": copy,
        "removed": !item.placed.present,
    }))
}

/// An entry's revision: the first 8 bytes of each intention its content and place were last
/// written by, in hex. Unlike `mtime_ms` (whose HLC wall part can stand still for a while
/// behind a peer's faster clock), it changes with every write, move or mode change.
fn revision(heads: &[&[u8]]) -> String {
    heads
        .iter()
        .map(|h| model::hex(&h[..h.len().min(8)]))
        .collect()
}

fn root_json() -> Value {
    json!({"name": "", "kind": "dir", "mode": 0o755, "size": 0, "mtime_ms": 0, "rev": "",
        "id": model::id_hex(&ROOT), "blob": null, "conflicted": false,
        "conflict_copy": false, "removed": false})
}

fn query_read(host: &dyn Host, args: &Args) -> Result<Value, StoreError> {
    let path = args.text("path")?;
    let item = resolve(host, &path)?.ok_or_else(|| err("EISDIR", &path))?;
    let (content, _) = tree::content_of(host, &item)?.ok_or_else(|| err("EISDIR", &path))?;
    let size = content.size();
    let offset = args
        .opt_integer("offset")?
        .map_or(0, |o| u64::try_from(o).unwrap_or(0))
        .min(size);
    let length = args
        .opt_integer("length")?
        .map_or(size - offset, |l| u64::try_from(l).unwrap_or(0))
        .min(size - offset);
    if length > MAX_READ {
        return Err(StoreError::InvalidArgument(format!(
            "reads are at most {MAX_READ} bytes; read in ranges"
        )));
    }
    let data = match &content {
        Content::Inline(bytes) => bytes[offset as usize..(offset + length) as usize].to_vec(),
        Content::Blob(hash, _) => {
            let mut out = Vec::with_capacity(length as usize);
            let mut at = offset;
            while at < offset + length {
                let n = (offset + length - at).min(lattice_sdk::BLOB_CHUNK as u64) as u32;
                let part = host.blob_read(hash, at, n).map_err(|e| match e {
                    BlobError::NotHere => StoreError::Internal(format!(
                        "the content of {path} is not fetched from the store's peers yet; try again shortly"
                    )),
                    other => StoreError::Internal(format!("reading {path}: {other:?}")),
                })?;
                if part.is_empty() {
                    break;
                }
                at += part.len() as u64;
                out.extend(part);
            }
            out
        }
    };
    Ok(json!({"data": bytes_json(&data), "size": size, "offset": offset}))
}

impl StoreType for FsStore {
    fn describe() -> Descriptor {
        use MethodKind::{Command, Query};
        use ParamKind::{Bytes, Integer, Text};
        let path = || param("path", Text, "a path in the store, `/`-separated");
        let mode = || optional_param("mode", Integer, "permission bits");
        Descriptor {
            name: "fs".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "a tree of files, directories and symlinks; concurrent edits keep conflict copies"
                    .into(),
            methods: vec![
                method(
                    "write",
                    Command,
                    "create or replace a file",
                    vec![
                        path(),
                        optional_param("data", Bytes, "the file's bytes (up to 8 MiB)"),
                        optional_param(
                            "blob",
                            Text,
                            "or: a blob of the store holding them (hex hash)",
                        ),
                        optional_param("size", Integer, "the blob's size"),
                        mode(),
                    ],
                    "{\"hash\"}",
                ),
                method(
                    "mkdir",
                    Command,
                    "create a directory",
                    vec![path(), mode()],
                    "{\"hash\"}",
                ),
                method(
                    "symlink",
                    Command,
                    "create a symbolic link",
                    vec![path(), param("target", Text, "where it points")],
                    "{\"hash\"}",
                ),
                method(
                    "rename",
                    Command,
                    "move or rename (replacing a file or empty directory)",
                    vec![
                        param("from", Text, "the entry"),
                        param("to", Text, "its new path"),
                    ],
                    "{\"hash\"}",
                ),
                method(
                    "unlink",
                    Command,
                    "remove a file or symlink",
                    vec![path()],
                    "{\"hash\"}",
                ),
                method(
                    "rmdir",
                    Command,
                    "remove an empty directory",
                    vec![path()],
                    "{\"hash\"}",
                ),
                method(
                    "chmod",
                    Command,
                    "change permission bits",
                    vec![path(), param("mode", Integer, "permission bits")],
                    "{\"hash\"}",
                ),
                method(
                    "resolve",
                    Command,
                    "keep the winner of concurrent writes, drop the conflict copies",
                    vec![path()],
                    "{\"hash\"}",
                ),
                method(
                    "stat",
                    Query,
                    "an entry's kind, mode, size, mtime, revision, blob",
                    vec![path()],
                    "{\"name\", \"kind\", \"mode\", \"size\", \"mtime_ms\", \"rev\", \"id\", \"blob\", \"conflicted\", \"conflict_copy\", \"removed\"}",
                ),
                method(
                    "readdir",
                    Query,
                    "a directory's entries",
                    vec![path()],
                    "{\"items\": [stat]}",
                ),
                method(
                    "read",
                    Query,
                    "a file's bytes",
                    vec![
                        path(),
                        optional_param("offset", Integer, "from this byte"),
                        optional_param(
                            "length",
                            Integer,
                            "at most this many bytes (8 MiB per call)",
                        ),
                    ],
                    "{\"data\", \"size\", \"offset\"}",
                ),
                method(
                    "readlink",
                    Query,
                    "a symlink's target",
                    vec![path()],
                    "{\"target\"}",
                ),
            ],
        }
    }

    fn prepare(host: &dyn Host, method: &str, args: &Args) -> Result<Prepared, StoreError> {
        match method {
            "write" => prepare_write(host, args),
            "mkdir" => {
                let path = args.text("path")?;
                create(host, &path, Kind::Dir, mode_arg(args, 0o755)?, None)
            }
            "symlink" => {
                let path = args.text("path")?;
                let target = args.bytes("target")?;
                if target.is_empty() || target.len() > 4096 || target.contains(&0) {
                    return Err(StoreError::InvalidArgument(
                        "`target` must be 1 to 4096 bytes without NUL".into(),
                    ));
                }
                create(
                    host,
                    &path,
                    Kind::Symlink,
                    0o777,
                    Some(Content::Inline(target)),
                )
            }
            "rename" => prepare_rename(host, args),
            "unlink" => prepare_remove(host, args, false),
            "rmdir" => prepare_remove(host, args, true),
            "chmod" => prepare_chmod(host, args),
            "resolve" => prepare_resolve(host, args),
            other => Err(StoreError::UnknownMethod(other.into())),
        }
    }

    fn apply(host: &mut dyn Host, op: &Intention) -> Result<(), StoreError> {
        for (index, fs_op) in decode_ops(&op.ops)?.into_iter().enumerate() {
            apply_one(host, op, index, fs_op)?;
        }
        Ok(())
    }

    fn query(host: &dyn Host, method: &str, args: &Args) -> Result<Value, StoreError> {
        match method {
            "stat" => match resolve(host, &args.text("path")?)? {
                Some(item) => item_json(host, &item),
                None => Ok(root_json()),
            },
            "readdir" => {
                let path = args.text("path")?;
                let dir = match resolve(host, &path)? {
                    None => ROOT,
                    Some(item) => match (&item.target, item.placed.loc.kind) {
                        (Target::Entry(id), Kind::Dir) => *id,
                        _ => return Err(err("ENOTDIR", &path)),
                    },
                };
                let items = tree::list(host, &dir)?
                    .iter()
                    .map(|i| item_json(host, i))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(json!({ "items": items }))
            }
            "read" => query_read(host, args),
            "readlink" => {
                let path = args.text("path")?;
                let item = resolve(host, &path)?.ok_or_else(|| err("EINVAL", &path))?;
                if item.placed.loc.kind != Kind::Symlink {
                    return Err(err("EINVAL", &path));
                }
                match tree::content_of(host, &item)? {
                    Some((Content::Inline(target), _)) => {
                        Ok(json!({"target": bytes_json(&target)}))
                    }
                    _ => Err(err("EINVAL", &path)),
                }
            }
            other => Err(StoreError::UnknownMethod(other.into())),
        }
    }
}

/// Reads a whole file's bytes (tests and tools; the content must be here).
///
/// # Errors
/// [`StoreError`] when the path names no file or its blob is not here.
pub fn read_all(host: &dyn Host, path: &str) -> Result<Vec<u8>, StoreError> {
    let item = resolve(host, path)?.ok_or_else(|| err("EISDIR", path))?;
    match tree::content_of(host, &item)? {
        Some((Content::Inline(bytes), _)) => Ok(bytes),
        Some((Content::Blob(hash, size), _)) => read_blob(host, &hash, size)
            .map_err(|e| StoreError::Internal(format!("reading {path}: {e:?}"))),
        None => Err(err("EISDIR", path)),
    }
}

lattice_sdk::export_store!(FsStore);

#[cfg(test)]
mod tests;
