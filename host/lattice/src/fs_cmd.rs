//! `lattice fs …`: files in a filesystem store (`--type fs`) without a mount. Small files
//! travel inside the write; larger ones are streamed into the store's blobs first and the
//! write names the blob, so nothing is held whole in memory either way.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use lattice_proto::v1;
use serde_json::{Value, json};

use crate::api::Client;
use crate::cli::FsCommand;
use crate::client_cmd::err;
use crate::output::{CliError, Output};

/// Files up to this size travel inside the write (the fs store keeps them in its state).
const INLINE: u64 = 64 << 10;

/// Calls `method` of filesystem store `store`.
pub(crate) async fn call(
    c: &mut Client,
    store: &str,
    method: &str,
    args: Value,
) -> anyhow::Result<Value> {
    let reply = c
        .store
        .call(v1::CallRequest {
            store: store.to_string(),
            method: method.to_string(),
            args_json: args.to_string(),
            words: Vec::new(),
        })
        .await
        .map_err(err)?
        .into_inner();
    serde_json::from_str(&reply.json).context("the node's reply is not JSON")
}

/// Fails unless `store` is a filesystem store.
pub(crate) async fn ensure_fs(c: &mut Client, store: &str) -> anyhow::Result<()> {
    let reply = c
        .store
        .inspect(v1::StoreRequest {
            store: store.to_string(),
        })
        .await
        .map_err(err)?
        .into_inner();
    let d: Value = serde_json::from_str(&reply.json).context("the node's reply is not JSON")?;
    let name = &d["descriptor"]["name"];
    if name != "fs" {
        return Err(CliError::new(
            "invalid_argument",
            format!("store {store} is a {name} store, not a filesystem store (`lattice store create --type fs`)"),
        )
        .into());
    }
    Ok(())
}

/// Writes local file `file` (or stdin, `-`) to `path` in the store.
pub(crate) async fn put(
    c: &mut Client,
    store: &str,
    file: &Path,
    path: &str,
    mode: Option<u32>,
    out: &Output,
) -> anyhow::Result<Value> {
    let stdin = file == Path::new("-");
    let size = if stdin {
        None
    } else {
        Some(
            std::fs::metadata(file)
                .with_context(|| format!("reading {}", file.display()))?
                .len(),
        )
    };
    let mut args = json!({ "path": path });
    if let Some(mode) = mode {
        args["mode"] = json!(mode);
    }
    if size.is_some_and(|s| s <= INLINE) {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        args["data"] = lattice_sdk::bytes_json(&bytes);
    } else {
        let source: Box<dyn std::io::Read + Send> = if stdin {
            Box::new(std::io::stdin())
        } else {
            Box::new(
                std::fs::File::open(file).with_context(|| format!("reading {}", file.display()))?,
            )
        };
        let name = file.display().to_string();
        let blob = crate::cas_cmd::put_from(c, store, source, size, &name, false, out).await?;
        args["blob"] = json!(blob.hash);
        args["size"] = json!(blob.size);
    }
    call(c, store, "write", args).await
}

/// Writes the file at `path` to `output` (or stdout), fetching its content from the store's
/// peers when it is not here.
pub(crate) async fn get(
    c: &mut Client,
    store: &str,
    path: &str,
    output: Option<&Path>,
    out: &Output,
) -> anyhow::Result<Value> {
    let stat = call(c, store, "stat", json!({ "path": path })).await?;
    if stat["kind"] != "file" {
        return Err(
            CliError::new("invalid_argument", format!("EISDIR: {path} is not a file")).into(),
        );
    }
    match stat["blob"].as_str() {
        Some(hash) => {
            let request = v1::BlobGetRequest {
                store: store.to_string(),
                hash: hash.to_string(),
                ..Default::default()
            };
            crate::cas_cmd::get(c, request, output, out).await?;
        }
        None => {
            let read = call(c, store, "read", json!({ "path": path })).await?;
            let bytes = lattice_sdk::json_bytes(&read["data"])
                .context("the node sent the file's bytes in an unknown form")?;
            match output {
                Some(file) => write_file(file, &bytes)?,
                None => {
                    use std::io::Write as _;
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&bytes).context("writing to stdout")?;
                    stdout.flush().context("writing to stdout")?;
                }
            }
        }
    }
    Ok(stat)
}

/// Writes `bytes` to `file` through a temporary file beside it.
fn write_file(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut tmp = tempfile::Builder::new()
        .prefix(".lattice-fs-")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(bytes).context("writing the file")?;
    tmp.as_file().sync_all().context("writing the file")?;
    tmp.persist(file)
        .with_context(|| format!("moving the file into {}", file.display()))?;
    Ok(())
}

/// Removes `path`, and with `recursive` everything under it first.
async fn remove(c: &mut Client, store: &str, path: &str, recursive: bool) -> anyhow::Result<u64> {
    let stat = call(c, store, "stat", json!({ "path": path })).await?;
    if stat["kind"] != "dir" {
        call(c, store, "unlink", json!({ "path": path })).await?;
        return Ok(1);
    }
    let mut removed = 0;
    if recursive {
        let listed = call(c, store, "readdir", json!({ "path": path })).await?;
        for item in listed["items"].as_array().into_iter().flatten() {
            if item["conflict_copy"] == true {
                continue;
            }
            let child = format!(
                "{}/{}",
                path.trim_end_matches('/'),
                item["name"].as_str().unwrap_or_default()
            );
            removed += Box::pin(remove(c, store, &child, true)).await?;
        }
    }
    call(c, store, "rmdir", json!({ "path": path })).await?;
    Ok(removed + 1)
}

fn kind_mark(kind: &Value) -> &'static str {
    match kind.as_str() {
        Some("dir") => "/",
        Some("symlink") => "@",
        _ => "",
    }
}

fn listing_text(items: &[Value]) -> String {
    items
        .iter()
        .map(|i| {
            format!(
                "{:>12}  {:04o}  {}{}{}",
                i["size"].as_u64().unwrap_or(0),
                i["mode"].as_u64().unwrap_or(0),
                i["name"].as_str().unwrap_or_default(),
                kind_mark(&i["kind"]),
                if i["conflict_copy"] == true {
                    "  (conflict copy: another peer's concurrent write)"
                } else {
                    ""
                }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs one `lattice fs` command against the node.
pub(crate) async fn run(cmd: FsCommand, mut c: Client, out: &Output) -> anyhow::Result<()> {
    let c = &mut c;
    match cmd {
        FsCommand::Put {
            store,
            file,
            path,
            mode,
        } => {
            ensure_fs(c, &store).await?;
            let path = path.unwrap_or_else(|| {
                file.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let reply = put(c, &store, &file, &path, mode, out).await?;
            out.record(
                &format!("wrote {path}"),
                json!({"path": path, "hash": reply["hash"]}),
            );
        }
        FsCommand::Get {
            store,
            path,
            output,
        } => {
            if out.json() && output.is_none() {
                return Err(CliError::new(
                    "invalid_argument",
                    "--json needs -o FILE: without it the file's bytes go to stdout",
                )
                .into());
            }
            ensure_fs(c, &store).await?;
            let stat = get(c, &store, &path, output.as_deref(), out).await?;
            if let Some(file) = output {
                out.record(
                    &format!("{path} → {} ({} bytes)", file.display(), stat["size"]),
                    json!({"path": path, "output": file, "size": stat["size"]}),
                );
            }
        }
        FsCommand::Ls { store, path } => {
            let listed = call(c, &store, "readdir", json!({ "path": path })).await?;
            let items = listed["items"].as_array().cloned().unwrap_or_default();
            out.record(&listing_text(&items), listed);
        }
        FsCommand::Stat { store, path } => {
            let stat = call(c, &store, "stat", json!({ "path": path })).await?;
            out.record(&serde_json::to_string_pretty(&stat)?, stat);
        }
        FsCommand::Mkdir {
            store,
            path,
            parents,
        } => {
            let mut made = Vec::new();
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            let steps: Vec<String> = if parents {
                (1..=parts.len()).map(|n| parts[..n].join("/")).collect()
            } else {
                vec![path.clone()]
            };
            for step in steps {
                if parents
                    && call(c, &store, "stat", json!({ "path": step }))
                        .await
                        .is_ok_and(|s| s["kind"] == "dir")
                {
                    continue;
                }
                call(c, &store, "mkdir", json!({ "path": step })).await?;
                made.push(step);
            }
            out.record(
                &format!("made {}", made.join(", ")),
                json!({ "made": made }),
            );
        }
        FsCommand::Mv { store, from, to } => {
            call(c, &store, "rename", json!({ "from": from, "to": to })).await?;
            out.record(&format!("{from} → {to}"), json!({"from": from, "to": to}));
        }
        FsCommand::Mount { store, dir } => {
            let dir = dir
                .canonicalize()
                .with_context(|| format!("the folder {}", dir.display()))?;
            let mounted =
                c.fs.mount(v1::MountRequest {
                    store: store.clone(),
                    dir: dir.display().to_string(),
                })
                .await
                .map_err(err)?
                .into_inner();
            let pid = c
                .node
                .status(v1::Empty {})
                .await
                .map_err(err)?
                .into_inner()
                .pid;
            let foreground = pid == std::process::id();
            out.record(
                &format!(
                    "mounted store {} on {}{}",
                    mounted.store,
                    mounted.dir,
                    if foreground {
                        " (no daemon runs: served by this command; Ctrl-C unmounts)"
                    } else {
                        " (served by the daemon; `lattice fs umount` unmounts)"
                    }
                ),
                json!({"store": mounted.store, "dir": mounted.dir, "foreground": foreground}),
            );
            if foreground {
                tokio::signal::ctrl_c()
                    .await
                    .context("waiting for Ctrl-C")?;
                c.fs.unmount(v1::UnmountRequest {
                    dir: mounted.dir.clone(),
                })
                .await
                .map_err(err)?;
                out.record(
                    &format!("unmounted {}", mounted.dir),
                    json!({"unmounted": mounted.dir}),
                );
            }
        }
        FsCommand::Umount { dir } => {
            let dir = dir.canonicalize().unwrap_or(dir);
            let info =
                c.fs.unmount(v1::UnmountRequest {
                    dir: dir.display().to_string(),
                })
                .await
                .map_err(err)?
                .into_inner();
            out.record(
                &format!("unmounted {} (store {})", info.dir, info.store),
                json!({"store": info.store, "dir": info.dir}),
            );
        }
        FsCommand::Mounts => {
            let list = c.fs.mounts(v1::Empty {}).await.map_err(err)?.into_inner();
            let text = if list.items.is_empty() {
                "(nothing mounted)".to_string()
            } else {
                list.items
                    .iter()
                    .map(|m| format!("{}  {}", m.dir, m.store))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let items: Vec<Value> = list
                .items
                .iter()
                .map(|m| json!({"store": m.store, "dir": m.dir}))
                .collect();
            out.record(&text, json!({ "items": items }));
        }
        FsCommand::Sync {
            store,
            dir,
            watch,
            interval,
        } => {
            let interval = std::time::Duration::from_secs_f64(interval);
            crate::fs_sync::run(c, &store, &dir, watch, interval, out).await?;
        }
        FsCommand::Rm {
            store,
            path,
            recursive,
        } => {
            let removed = remove(c, &store, &path, recursive).await?;
            out.record(
                &format!("removed {path} ({removed} entries)"),
                json!({"path": path, "removed": removed}),
            );
        }
    }
    Ok(())
}
