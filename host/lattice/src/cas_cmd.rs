//! `lattice cas …`: blobs of a store through the node's API (`BlobService`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use lattice_proto::v1::{self, blob_get_reply::Part};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use crate::api::Client;
use crate::cli::CasCommand;
use crate::client_cmd::err;
use crate::output::{CliError, Meter, Output, mib};

/// Bytes per `Put` message.
const PART: usize = 256 << 10;

fn blob_json(store: &str, b: &v1::BlobInfo) -> Value {
    json!({
        "store": store,
        "hash": b.hash,
        "size": b.size,
        "pins": b.pins,
        "refs": b.refs,
        "added_ms": b.added_ms,
    })
}

/// Parses `START..END` (either side may be left out) into an offset and a length (0: to
/// the end).
fn parse_range(text: &str) -> anyhow::Result<(u64, u64)> {
    let bad = |why: &str| {
        CliError::new(
            "invalid_argument",
            format!("--range `{text}`: {why}; write START..END, START.. or ..END (END exclusive)"),
        )
    };
    let (start, end) = text.split_once("..").ok_or_else(|| bad("no `..`"))?;
    let number = |s: &str| -> anyhow::Result<Option<u64>> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        Ok(Some(s.parse().map_err(|_| bad("not a byte offset"))?))
    };
    let start = number(start)?.unwrap_or(0);
    match number(end)? {
        None => Ok((start, 0)),
        Some(end) if end > start => Ok((start, end - start)),
        Some(_) => Err(bad("it is empty").into()),
    }
}

pub(crate) async fn run(cmd: CasCommand, mut c: Client, out: &Output) -> anyhow::Result<()> {
    match cmd {
        CasCommand::Put { store, file, pin } => {
            let b = put(&mut c, &store, &file, pin, out).await?;
            out.record(
                &format!(
                    "{}  {} bytes{}",
                    b.hash,
                    b.size,
                    if b.pins > 0 { ", pinned" } else { "" }
                ),
                blob_json(&store, &b),
            );
        }
        CasCommand::Get {
            store,
            hash,
            output,
            range,
            local,
        } => {
            if out.json() && output.is_none() {
                return Err(CliError::new(
                    "invalid_argument",
                    "--json needs -o FILE: without it the blob's bytes go to stdout",
                )
                .into());
            }
            let (offset, length) = match range {
                Some(r) => parse_range(&r)?,
                None => (0, 0),
            };
            let request = v1::BlobGetRequest {
                store: store.clone(),
                hash,
                offset,
                length,
                local_only: local,
            };
            let (info, written) = get(&mut c, request, output.as_deref(), out).await?;
            if let Some(path) = output {
                let mut record = blob_json(&store, &info);
                record["file"] = json!(path.display().to_string());
                record["written"] = json!(written);
                record["fetched_from"] = json!(info.fetched_from);
                record["fetched_bytes"] = json!(info.fetched_bytes);
                let fetched = if info.fetched_from.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (fetched {} from {})",
                        mib(info.fetched_bytes),
                        &info.fetched_from[..info.fetched_from.len().min(16)]
                    )
                };
                out.record(
                    &format!("wrote {written} bytes to {}{fetched}", path.display()),
                    record,
                );
            }
        }
        CasCommand::Stat { store, hash } => {
            let b = c
                .blob
                .stat(v1::BlobRequest {
                    store: store.clone(),
                    hash,
                })
                .await
                .map_err(err)?
                .into_inner();
            out.record(
                &format!(
                    "blob   {}\nsize   {} bytes\npins   {}\nrefs   {}\nadded  {} ms since the epoch",
                    b.hash, b.size, b.pins, b.refs, b.added_ms
                ),
                blob_json(&store, &b),
            );
        }
        CasCommand::Pin { store, hash } => pin(&mut c, store, hash, true, out).await?,
        CasCommand::Unpin { store, hash } => pin(&mut c, store, hash, false, out).await?,
        CasCommand::Policy {
            store,
            mode,
            copies,
        } => {
            let p = c
                .blob
                .policy(v1::BlobPolicyRequest {
                    store,
                    mode: mode.unwrap_or_default(),
                    copies,
                })
                .await
                .map_err(err)?
                .into_inner();
            let text = match p.mode.as_str() {
                "copies" => format!("{} members keep each blob of {}", p.copies, p.store),
                _ => format!("every member keeps every blob of {}", p.store),
            };
            let copies = (p.mode == "copies").then_some(p.copies);
            out.record(
                &text,
                json!({"store": p.store, "mode": p.mode, "copies": copies}),
            );
        }
        CasCommand::Gc { grace } => {
            let r = c
                .blob
                .collect(v1::BlobCollectRequest {
                    grace_seconds: grace,
                })
                .await
                .map_err(err)?
                .into_inner();
            out.record(
                &format!(
                    "{} holds let go, {} blobs deleted ({})",
                    r.released,
                    r.deleted,
                    mib(r.bytes)
                ),
                json!({"released": r.released, "deleted": r.deleted, "bytes": r.bytes}),
            );
        }
        CasCommand::Status { store, list } => {
            let s = c
                .blob
                .status(v1::BlobStatusRequest {
                    store: store.clone(),
                    list,
                })
                .await
                .map_err(err)?
                .into_inner();
            let mut text = format!(
                "{} blobs, {} ({} bytes): {} pinned, {} referenced, {} loose",
                s.blobs,
                mib(s.bytes),
                s.bytes,
                s.pinned,
                s.referenced,
                s.loose
            );
            for b in &s.items {
                text.push_str(&format!(
                    "\n{}  {:>12} bytes  pins {}  refs {}",
                    b.hash, b.size, b.pins, b.refs
                ));
            }
            let items: Vec<Value> = s.items.iter().map(|b| blob_json(&s.store, b)).collect();
            out.record(
                &text,
                json!({
                    "store": s.store,
                    "blobs": s.blobs,
                    "bytes": s.bytes,
                    "pinned": s.pinned,
                    "referenced": s.referenced,
                    "loose": s.loose,
                    "items": items,
                }),
            );
        }
    }
    Ok(())
}

async fn pin(
    c: &mut Client,
    store: String,
    hash: String,
    pin: bool,
    out: &Output,
) -> anyhow::Result<()> {
    let b = c
        .blob
        .pin(v1::BlobPinRequest {
            store: store.clone(),
            hash,
            pin,
        })
        .await
        .map_err(err)?
        .into_inner();
    out.record(
        &format!("{}  pins {}  refs {}", b.hash, b.pins, b.refs),
        blob_json(&store, &b),
    );
    Ok(())
}

/// Streams `file` (or stdin for `-`) to the node as a blob of `store`. A read failure
/// cancels the call, so the node keeps nothing of it.
async fn put(
    c: &mut Client,
    store: &str,
    file: &Path,
    pin: bool,
    out: &Output,
) -> anyhow::Result<v1::BlobInfo> {
    let (source, total): (Box<dyn Read + Send>, Option<u64>) = if file == Path::new("-") {
        (Box::new(std::io::stdin()), None)
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let len = f.metadata().map(|m| m.len()).ok();
        (Box::new(f), len)
    };
    put_from(
        c,
        store,
        source,
        total,
        &file.display().to_string(),
        pin,
        out,
    )
    .await
}

/// Streams what `source` (`name`, `total` bytes when known) yields to the node as a blob of
/// `store`, read on a blocking thread. A read failure cancels the call, so the node keeps
/// nothing of it.
pub(crate) async fn put_from(
    c: &mut Client,
    store: &str,
    mut source: Box<dyn Read + Send>,
    total: Option<u64>,
    name: &str,
    pin: bool,
    out: &Output,
) -> anyhow::Result<v1::BlobInfo> {
    let mut meter = Meter::new(out, "putting", total);
    let (tx, rx) = mpsc::channel::<v1::BlobPutRequest>(8);
    let mut first = Some((store.to_string(), pin));
    let name = name.to_string();
    let reading = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut sent = 0u64;
        let result = loop {
            let mut data = vec![0; PART];
            let n = match source.read(&mut data) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => other.with_context(|| format!("reading {name}"))?,
            };
            if n == 0 && first.is_none() {
                break Ok(());
            }
            data.truncate(n);
            let (store, pin) = first.take().unwrap_or_default();
            // A closed channel: the call ended (its outcome says why).
            if tx
                .blocking_send(v1::BlobPutRequest { store, data, pin })
                .is_err()
                || n == 0
            {
                break Ok(());
            }
            sent += n as u64;
            meter.show(sent);
        };
        meter.finish();
        result
    });
    let call = c.blob.put(tokio_stream::wrappers::ReceiverStream::new(rx));
    tokio::pin!(call, reading);
    let mut read_done = false;
    loop {
        tokio::select! {
            reply = &mut call => return Ok(reply.map_err(err)?.into_inner()),
            read = &mut reading, if !read_done => {
                // Returning drops the call: the node sees the stream fail and keeps nothing.
                read??;
                read_done = true;
            }
        }
    }
}

/// Asks for a blob and writes its bytes to `output` (a temporary file beside it, moved into
/// place only once every byte arrived) or stdout. Returns the blob and the bytes written.
pub(crate) async fn get(
    c: &mut Client,
    request: v1::BlobGetRequest,
    output: Option<&Path>,
    out: &Output,
) -> anyhow::Result<(v1::BlobInfo, u64)> {
    let Some(path) = output else {
        // `Stdout` (locked per write) rather than a lock held across awaits: the future stays
        // `Send`, so several gets can run as tasks.
        let mut stdout = std::io::stdout();
        let got = get_into(c, request, &mut stdout, out).await?;
        stdout.flush().context("writing the blob out")?;
        return Ok(got);
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut file = tempfile::Builder::new()
        .prefix(".lattice-get-")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let got = get_into(c, request, &mut file, out).await?;
    file.as_file().sync_all().context("writing the blob out")?;
    file.persist(path)
        .with_context(|| format!("moving the blob into {}", path.display()))?;
    Ok(got)
}

/// Asks for a blob and writes its bytes to `sink` as they come, showing progress; fails
/// unless every byte asked for arrived. Returns the blob and the bytes written.
pub(crate) async fn get_into(
    c: &mut Client,
    request: v1::BlobGetRequest,
    sink: &mut (dyn Write + Send),
    out: &Output,
) -> anyhow::Result<(v1::BlobInfo, u64)> {
    let (offset, length) = (request.offset, request.length);
    let mut stream = c.blob.get(request).await.map_err(err)?.into_inner();
    let mut meter = Meter::new(out, "fetching", None);
    let (mut info, mut written, mut expected) = (None, 0u64, 0u64);
    while let Some(message) = stream.next().await {
        match message.map_err(err)?.part {
            Some(Part::Progress(p)) => meter.show(p.received),
            Some(Part::Info(b)) => {
                meter.finish();
                expected = match length {
                    0 => b.size.saturating_sub(offset),
                    n => n,
                };
                meter = Meter::new(out, "writing", Some(expected));
                info = Some(b);
            }
            Some(Part::Data(data)) => {
                sink.write_all(&data).context("writing the blob out")?;
                written += data.len() as u64;
                meter.show(written);
            }
            None => {}
        }
    }
    meter.finish();
    let info = info.context("the node ended the reply before saying what the blob is")?;
    if written != expected {
        anyhow::bail!("the node sent {written} of the {expected} bytes asked for");
    }
    Ok((info, written))
}
