//! The write path a user takes, through a real `lattice daemon` process and its gRPC API over
//! the Unix socket: many concurrent callers on one store each get their own outcome and read
//! their own writes; SIGKILL under 16 concurrent writers loses no acknowledged put, and the
//! state the restarted node has matches a replay of its log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lattice_proto::v1;
use lattice_proto::v1::store_service_client::StoreServiceClient;
use serde_json::{Value, json};
use tonic::transport::Channel;

mod common;
use common::{json, spawn_daemon};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DEADLINE: Duration = Duration::from_secs(60);

/// A daemon process (killed on drop when still running).
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(dir: &Path) -> Result<Daemon, Box<dyn std::error::Error>> {
        Ok(Daemon {
            child: spawn_daemon(dir, &[])?,
        })
    }

    fn kill(mut self) -> TestResult {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn connect(dir: &Path) -> Result<StoreServiceClient<Channel>, Box<dyn std::error::Error>> {
    let path: PathBuf = dir.join("lattice.sock");
    let channel = tonic::transport::Endpoint::from_static("http://lattice.local")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(StoreServiceClient::new(channel))
}

async fn call(
    client: &mut StoreServiceClient<Channel>,
    store: &str,
    method: &str,
    args: Value,
) -> Result<Value, tonic::Status> {
    let reply = client
        .call(v1::CallRequest {
            store: store.to_string(),
            method: method.to_string(),
            args_json: args.to_string(),
            words: Vec::new(),
        })
        .await?
        .into_inner();
    serde_json::from_str(&reply.json).map_err(|e| tonic::Status::internal(e.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_each_get_their_own_outcome_and_read_their_writes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start(dir.path())?;
    let store = json(
        dir.path(),
        &["store", "create", "--type", "kv", "--name", "busy"],
    )?["store"]
        .as_str()
        .ok_or("no store id")?
        .to_string();
    let client = connect(dir.path()).await?;
    let mut callers = Vec::new();
    for caller in 0..16u32 {
        let (mut client, store) = (client.clone(), store.clone());
        callers.push(tokio::spawn(async move {
            let mut hashes = Vec::new();
            for i in 0..40u32 {
                let key = format!("c{caller:02}-{i:03}");
                if i % 10 == 7 {
                    // A bad call among good ones fails for its caller alone.
                    let bad = call(&mut client, &store, "put", json!({"key": key})).await;
                    match bad {
                        Err(status) if status.code() == tonic::Code::InvalidArgument => {}
                        other => return Err(format!("bad put answered {other:?}")),
                    }
                    continue;
                }
                let value = format!("v{caller}-{i}");
                let wrote = call(
                    &mut client,
                    &store,
                    "put",
                    json!({"key": key, "value": value}),
                )
                .await
                .map_err(|e| format!("put {key}: {e}"))?;
                let hash = wrote["hash"].as_str().ok_or("no hash")?.to_string();
                hashes.push(hash);
                let read = call(&mut client, &store, "get", json!({"key": key}))
                    .await
                    .map_err(|e| format!("get {key}: {e}"))?;
                if read["value"] != value.as_str() {
                    return Err(format!("{key} read {read} right after writing {value}"));
                }
            }
            Ok(hashes)
        }));
    }
    let mut all = Vec::new();
    for caller in callers {
        all.extend(caller.await??);
    }
    let written = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), written, "every put got its own intention");
    assert_eq!(written, 16 * 36);
    // One key written by two callers at once ends with one of their values.
    let mut racers = Vec::new();
    for caller in 0..2 {
        let (mut client, store) = (client.clone(), store.clone());
        racers.push(tokio::spawn(async move {
            call(
                &mut client,
                &store,
                "put",
                json!({"key": "shared", "value": format!("r{caller}")}),
            )
            .await
        }));
    }
    for racer in racers {
        racer.await??;
    }
    let mut reader = client.clone();
    let shared = call(&mut reader, &store, "get", json!({"key": "shared"})).await?;
    assert!(
        shared["value"] == "r0" || shared["value"] == "r1",
        "{shared}"
    );
    drop(daemon);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_sixteen_writers_loses_no_acknowledged_put() -> TestResult {
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start(dir.path())?;
    let store = json(
        dir.path(),
        &["store", "create", "--type", "kv", "--name", "crashy"],
    )?["store"]
        .as_str()
        .ok_or("no store id")?
        .to_string();
    let client = connect(dir.path()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let mut writers = Vec::new();
    for writer in 0..16u32 {
        let (mut client, store, stop, acked) = (
            client.clone(),
            store.clone(),
            stop.clone(),
            acked_tx.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("w{writer:02}-{i:05}"), format!("{writer}:{i}"));
                // Once the daemon is gone, calls fail: that is the end of this writer.
                if call(
                    &mut client,
                    &store,
                    "put",
                    json!({"key": key, "value": value}),
                )
                .await
                .is_err()
                {
                    return;
                }
                let _ = acked.send((key, value));
                i += 1;
            }
        }));
    }
    drop(acked_tx);
    // Kill the daemon mid-stream, after a few hundred acknowledged puts.
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    while acked.len() < 400 {
        match tokio::time::timeout(DEADLINE, acked_rx.recv()).await {
            Ok(Some((k, v))) => {
                acked.insert(k, v);
            }
            Ok(None) => return Err("the writers stopped early".into()),
            Err(_) => return Err("the writers stalled".into()),
        }
    }
    daemon.kill()?;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await?;
    }
    // Acknowledgements that were in flight when the daemon died count too.
    while let Ok((k, v)) = acked_rx.try_recv() {
        acked.insert(k, v);
    }

    // Offline: the state caught up from the durable cursor equals a replay of the log.
    let rebuilt = json(dir.path(), &["store", "rebuild", &store])?;
    assert_eq!(
        rebuilt["digest_before"], rebuilt["digest_after"],
        "state after the crash differs from a replay of the log: {rebuilt}"
    );

    // Every acknowledged put is there after a restart.
    let daemon = Daemon::start(dir.path())?;
    let mut client = connect(dir.path()).await?;
    for (key, value) in &acked {
        let read = call(&mut client, &store, "get", json!({"key": key})).await?;
        assert_eq!(read["value"], value.as_str(), "acknowledged {key} lost");
    }
    drop(daemon);
    Ok(())
}
