//! Faults at the client: the daemon killed (SIGKILL) while CLI writers keep going, then
//! restarted while they still run. Every restart succeeds (a starting daemon waits for a
//! one-shot command's lock; one-shot commands wait for a starting daemon), every put the CLI
//! acknowledged reads back, and every failed put says the daemon went away.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::{json, lattice, spawn_daemon};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const WRITERS: usize = 4;
/// Acknowledged puts to wait for between faults.
const BETWEEN: usize = 12;
const ROUNDS: usize = 3;
const DEADLINE: Duration = Duration::from_secs(120);

/// One CLI writer: puts `w<n>-<i>` until told to stop; reports each acknowledged key, and
/// the stderr of each failed put.
fn writer(
    dir: PathBuf,
    store: String,
    n: usize,
    stop: Arc<AtomicBool>,
    acks: mpsc::Sender<Result<String, String>>,
) {
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let key = format!("w{n}-{i}");
        i += 1;
        let outcome = match lattice(&dir, &["put", &store, &key, "v"]) {
            Ok(out) if out.status.success() => Ok(key),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
            Err(e) => Err(e.to_string()),
        };
        if acks.send(outcome).is_err() {
            return;
        }
    }
}

/// Waits for `count` acknowledged puts, collecting them (and failures) as they come.
fn wait_acks(
    rx: &mpsc::Receiver<Result<String, String>>,
    count: usize,
    acked: &mut Vec<String>,
    failed: &mut Vec<String>,
) -> TestResult {
    let mut got = 0;
    while got < count {
        match rx.recv_timeout(DEADLINE)? {
            Ok(key) => {
                acked.push(key);
                got += 1;
            }
            Err(text) => failed.push(text),
        }
    }
    Ok(())
}

fn kill(child: &mut std::process::Child) -> TestResult {
    child.kill()?;
    child.wait()?;
    Ok(())
}

fn get(dir: &Path, store: &str, key: &str) -> Result<String, Box<dyn std::error::Error>> {
    let v = json(dir, &["get", store, key])?;
    Ok(v["value"].as_str().unwrap_or_default().to_string())
}

#[test]
fn sigkill_and_restart_while_cli_writers_keep_going_loses_nothing() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("node");
    let mut daemon = spawn_daemon(&dir, &["--listen", "127.0.0.1:0"])?;
    let store = json(
        &dir,
        &["store", "create", "--type", "kv", "--name", "faults"],
    )?["store"]
        .as_str()
        .ok_or("no store id")?
        .to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let writers: Vec<_> = (0..WRITERS)
        .map(|n| {
            let (dir, store, stop, tx) = (dir.clone(), store.clone(), stop.clone(), tx.clone());
            std::thread::spawn(move || writer(dir, store, n, stop, tx))
        })
        .collect();
    drop(tx);

    let mut acked = Vec::new();
    let mut failed = Vec::new();
    for _ in 0..ROUNDS {
        wait_acks(&rx, BETWEEN, &mut acked, &mut failed)?;
        kill(&mut daemon)?;
        // Writers go on without a daemon (each put runs the node in its own process)…
        wait_acks(&rx, BETWEEN, &mut acked, &mut failed)?;
        // …and the daemon comes back while they still write.
        daemon = spawn_daemon(&dir, &["--listen", "127.0.0.1:0"])?;
    }
    wait_acks(&rx, BETWEEN, &mut acked, &mut failed)?;
    stop.store(true, Ordering::SeqCst);
    while let Ok(outcome) = rx.recv_timeout(DEADLINE) {
        match outcome {
            Ok(key) => acked.push(key),
            Err(text) => failed.push(text),
        }
    }
    for w in writers {
        w.join().map_err(|_| "a writer panicked")?;
    }

    for text in &failed {
        assert!(
            text.contains("daemon"),
            "a failed put must say what happened to the daemon: {text}"
        );
    }
    for key in &acked {
        assert_eq!(get(&dir, &store, key)?, "v", "acknowledged {key} was lost");
    }
    let verify = lattice(&dir, &["log", "verify", &store])?;
    assert!(
        verify.status.success(),
        "log verify through the daemon: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    kill(&mut daemon)?;
    Ok(())
}

#[test]
fn a_module_over_the_grpc_default_size_installs_and_an_oversized_one_names_the_limit() -> TestResult
{
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("node");
    let mut daemon = spawn_daemon(&dir, &["--listen", "127.0.0.1:0"])?;
    // A real component padded with a 5 MiB custom section: over gRPC's 4 MiB default.
    let kv = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests/dist/kvstore.wasm"),
    )?;
    let mut big = kv.clone();
    let payload = vec![0u8; 5 << 20];
    let name = b"padding";
    let mut section = Vec::new();
    leb128(&mut section, (name.len() + 1 + payload.len()) as u64);
    section.push(name.len() as u8);
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    big.push(0);
    big.extend_from_slice(&section);
    let file = temp.path().join("big.wasm");
    std::fs::write(&file, &big)?;
    let installed = json(&dir, &["module", "install", file.to_str().ok_or("path")?])?;
    assert!(installed["module"].is_string(), "{installed}");
    // A component is kept as it is: its type is named by the file's own hash.
    assert_eq!(installed["file_hash"], installed["module"], "{installed}");
    assert_eq!(installed["componentized"], false, "{installed}");

    let huge = temp.path().join("huge.wasm");
    std::fs::write(&huge, vec![0u8; lattice_runtime::MAX_MODULE_BYTES + 1])?;
    let out = lattice(&dir, &["module", "install", huge.to_str().ok_or("path")?])?;
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("64 MiB"), "{text}");
    kill(&mut daemon)?;
    Ok(())
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
