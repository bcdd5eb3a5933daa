//! Real `lattice daemon` processes on loopback, driven by the CLI as a user would: create,
//! invite, join, put and get across three nodes; child stores on every peer; revocation;
//! leave and re-join; bad tokens; restart; a second daemon on the same data directory.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{fails_json, json, lattice, spawn_daemon};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DEADLINE: Duration = Duration::from_secs(60);

/// Runs a command that must fail; returns its stderr.
fn fails(dir: &Path, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = lattice(dir, args)?;
    if out.status.success() {
        return Err(format!("lattice {} succeeded but should fail", args.join(" ")).into());
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A daemon process, stopped (and waited for) on drop.
struct Daemon {
    dir: PathBuf,
    child: Child,
}

impl Daemon {
    /// Starts a daemon and waits until it reports it is running.
    fn start(dir: &Path) -> Result<Daemon, Box<dyn std::error::Error>> {
        // Quick anti-entropy: the test waits on convergence, not on the default period.
        let child = spawn_daemon(dir, &["--anti-entropy", "1"])?;
        Ok(Daemon {
            dir: dir.to_path_buf(),
            child,
        })
    }

    fn stop(mut self) -> TestResult {
        json(&self.dir, &["node", "stop"])?;
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

/// Re-runs `get` until the value is `want` (or the deadline passes).
fn until_value(dir: &Path, store: &str, key: &str, want: &Value) -> TestResult {
    let start = Instant::now();
    loop {
        // A large value is a blob: until the node has fetched it, `get` says so.
        let got = match json(dir, &["get", store, key]) {
            Err(e) if e.to_string().contains("not fetched") => Value::Null,
            other => other?,
        };
        if &got["value"] == want {
            return Ok(());
        }
        if start.elapsed() > DEADLINE {
            return Err(format!(
                "{key} is {} on {}, want {want}",
                got["value"],
                dir.display()
            )
            .into());
        }
    }
}

#[test]
fn three_daemons_create_invite_join_children_revoke_leave_rejoin_restart() -> TestResult {
    let temp = tempfile::tempdir()?;
    let [a_dir, b_dir, c_dir] = ["a", "b", "c"].map(|n| temp.path().join(n));
    let a = Daemon::start(&a_dir)?;
    let b = Daemon::start(&b_dir)?;
    let c = Daemon::start(&c_dir)?;

    // The API socket is private; a second daemon on the same data directory refuses.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(a_dir.join("lattice.sock"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let second = fails(&a_dir, &["daemon"])?;
    assert!(second.contains("a daemon already runs"), "{second}");

    let store = json(
        &a_dir,
        &["store", "create", "--type", "kv", "--name", "shared"],
    )?["store"]
        .as_str()
        .ok_or("no id")?
        .to_string();
    json(&a_dir, &["put", &store, "greeting", "hello"])?;

    // Bad tokens: garbage, damaged, expired, wrong mesh.
    let garbage = fails(&b_dir, &["store", "join", "hello"])?;
    assert!(garbage.contains("not a Lattice invite token"), "{garbage}");
    let token = json(&a_dir, &["store", "invite", &store])?["token"]
        .as_str()
        .ok_or("no token")?
        .to_string();
    let damaged = fails(&b_dir, &["store", "join", &token[..token.len() - 4]])?;
    assert!(damaged.contains("damaged"), "{damaged}");
    let short_lived = json(&a_dir, &["store", "invite", &store, "--ttl", "1"])?;
    let expired = short_lived["token"].as_str().ok_or("no token")?.to_string();
    let expires_ms = short_lived["expires_ms"].as_u64().ok_or("no expiry")?;
    let other = json(
        &c_dir,
        &["store", "create", "--type", "kv", "--name", "elsewhere"],
    )?["store"]
        .as_str()
        .ok_or("no id")?
        .to_string();
    let wrong = json(&c_dir, &["store", "invite", &other])?["token"]
        .as_str()
        .ok_or("no token")?
        .to_string();
    // The inviter no longer has that store open: the token is for another mesh now.
    json(&c_dir, &["store", "leave", &other])?;
    let wrong_mesh = fails(&b_dir, &["store", "join", &wrong])?;
    assert!(wrong_mesh.contains("another mesh"), "{wrong_mesh}");

    // B and C join; every node reads and writes.
    json(&b_dir, &["store", "join", &token])?;
    let reused = fails(&c_dir, &["store", "join", &token])?;
    assert!(reused.contains("already used"), "{reused}");
    // Expiry is about wall-clock time: wait until the token's expiry has passed.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    if now_ms <= expires_ms {
        std::thread::sleep(Duration::from_millis(expires_ms - now_ms + 1));
    }
    let expired_err = fails(&c_dir, &["store", "join", &expired])?;
    assert!(expired_err.contains("expired"), "{expired_err}");
    let token_c = json(&a_dir, &["store", "invite", &store])?["token"]
        .as_str()
        .ok_or("no token")?
        .to_string();
    json(&c_dir, &["store", "join", &token_c])?;
    assert_eq!(
        json(&c_dir, &["get", &store, "greeting"])?["value"],
        "hello"
    );
    json(&b_dir, &["put", &store, "from-b", "1"])?;
    json(&c_dir, &["put", &store, "from-c", "2"])?;
    for dir in [&a_dir, &b_dir, &c_dir] {
        until_value(dir, &store, "from-b", &Value::from("1"))?;
        until_value(dir, &store, "from-c", &Value::from("2"))?;
    }
    // `node status` counts what replication did: A sent its writes by gossip and took part
    // in sessions with the joiners.
    let replication = &json(&a_dir, &["node", "status"])?["replication"];
    assert!(
        replication["gossip_sent"].as_u64() >= Some(1),
        "{replication}"
    );
    let sessions =
        replication["sessions"].as_u64().unwrap_or(0) + replication["served"].as_u64().unwrap_or(0);
    assert!(sessions >= 1, "{replication}");

    // `store watch` on B streams a change written on A.
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_lattice"))
        .arg("--data-dir")
        .arg(&b_dir)
        .args(["--json", "store", "watch", &store])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = watcher.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The watch is subscribed once the first event arrives; write until one does.
    let start = Instant::now();
    let mut n = 0;
    let seen = loop {
        n += 1;
        json(&a_dir, &["put", &store, "watched", &format!("v{n}")])?;
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
            break line;
        }
        if start.elapsed() > DEADLINE {
            return Err("store watch printed nothing".into());
        }
    };
    let event: Value = serde_json::from_str(&seen)?;
    assert_eq!(event["topic"], "kv");
    assert_eq!(event["payload"]["key"], "watched");
    let _ = watcher.kill();
    let _ = watcher.wait();

    // A child store created on B appears on every peer.
    let child = json(
        &b_dir,
        &[
            "store", "create", "--type", "kv", "--name", "notes", "--parent", &store,
        ],
    )?["store"]
        .as_str()
        .ok_or("no id")?
        .to_string();
    json(&b_dir, &["put", &child, "in-child", "yes"])?;
    for dir in [&a_dir, &c_dir] {
        let start = Instant::now();
        while !json(dir, &["get", &child, "in-child"]).is_ok_and(|v| v["value"] == "yes") {
            if start.elapsed() > DEADLINE {
                return Err(format!("the child store never reached {}", dir.display()).into());
            }
        }
    }

    // Revoking C: its later writes are refused everywhere.
    let c_key = json(&c_dir, &["node", "id"])?["node"]
        .as_str()
        .ok_or("no key")?
        .to_string();
    json(&a_dir, &["store", "revoke-peer", &store, &c_key])?;
    // C may already know it is revoked (its write is then refused) or not (it lands on C
    // only); either way no one else projects it.
    lattice(&c_dir, &["put", &store, "from-c", "after revocation"])?;
    json(&a_dir, &["put", &store, "marker", "m"])?;
    until_value(&b_dir, &store, "marker", &Value::from("m"))?;
    for dir in [&a_dir, &b_dir] {
        assert_eq!(json(dir, &["get", &store, "from-c"])?["value"], "2");
    }

    // B leaves and re-joins with a fresh token, keeping its data.
    json(&b_dir, &["store", "leave", &store])?;
    let left = json(&b_dir, &["store", "status", &store])?;
    assert_eq!(left["state"], "left");
    let again = json(&a_dir, &["store", "invite", &store])?["token"]
        .as_str()
        .ok_or("no token")?
        .to_string();
    let rejoined = json(&b_dir, &["store", "rejoin", &again])?;
    assert_eq!(rejoined["fetched"], 0);
    json(&a_dir, &["put", &store, "after-rejoin", "ok"])?;
    until_value(&b_dir, &store, "after-rejoin", &Value::from("ok"))?;

    // Restarting A keeps everything.
    let before = json(&a_dir, &["store", "status", &store])?;
    a.stop()?;
    let a = Daemon::start(&a_dir)?;
    let after = json(&a_dir, &["store", "status", &store])?;
    assert!(after["witnessed"].as_u64() >= before["witnessed"].as_u64());
    assert_eq!(
        json(&a_dir, &["get", &store, "greeting"])?["value"],
        "hello"
    );
    let listed = lattice(&a_dir, &["--json", "store", "list"])?;
    let text = String::from_utf8(listed.stdout)?;
    assert!(text.contains(&child), "{text}");
    json(&b_dir, &["put", &store, "after-restart", "yes"])?;
    until_value(&a_dir, &store, "after-restart", &Value::from("yes"))?;

    a.stop()?;
    b.stop()?;
    c.stop()?;
    Ok(())
}

#[test]
fn failures_have_codes_large_values_round_trip_and_stop_ends_watches() -> TestResult {
    let temp = tempfile::tempdir()?;
    let [a_dir, b_dir] = ["a", "b"].map(|n| temp.path().join(n));
    let a = Daemon::start(&a_dir)?;
    let b = Daemon::start(&b_dir)?;
    let store = json(
        &a_dir,
        &["store", "create", "--type", "kv", "--name", "large"],
    )?["store"]
        .as_str()
        .ok_or("no id")?
        .to_string();
    let token = json(&a_dir, &["store", "invite", &store])?["token"]
        .as_str()
        .ok_or("no token")?
        .to_string();
    json(&b_dir, &["store", "join", &token])?;

    // A 1 MiB value from a file on A (kept as a blob) is read back on B once B fetched it;
    // over 8 MiB is refused with a code.
    let big = "v".repeat(1 << 20);
    let file = temp.path().join("big.txt");
    std::fs::write(&file, &big)?;
    json(
        &a_dir,
        &["put", &store, "big", "--file", &file.to_string_lossy()],
    )?;
    until_value(&b_dir, &store, "big", &Value::String(big.clone()))?;
    std::fs::write(&file, "v".repeat((8 << 20) + 1))?;
    let (code, e) = fails_json(
        &a_dir,
        &["put", &store, "big", "--file", &file.to_string_lossy()],
    )?;
    assert_ne!(code, 0);
    assert_eq!(e["code"], "invalid_argument", "{e}");

    // Every failure exits non-zero with a stable code under --json.
    let b_key = json(&b_dir, &["node", "id"])?["node"]
        .as_str()
        .ok_or("no key")?
        .to_string();
    for (args, want) in [
        (vec!["get", "ffffffff", "k"], "not_found"),
        (vec!["store", "revoke-peer", &store, &b_key], "revoke_self"),
        (
            vec!["store", "revoke-peer", &store, &"9".repeat(64)],
            "not_a_peer",
        ),
        (vec!["store", "join", "hello"], "bad_token"),
        (vec!["store", "join", &token], "already_member"),
        (vec!["store", "call", &store, "nope"], "invalid_argument"),
        (vec!["store", "frobnicate"], "usage"),
        (vec!["put", &store], "usage"),
    ] {
        let (code, e) = fails_json(&b_dir, &args)?;
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(e["code"], want, "{args:?}: {e}");
        assert!(e["error"].as_str().is_some_and(|t| !t.is_empty()));
    }
    // Nothing was rejected; the listing says so.
    let rejected = lattice(&a_dir, &["store", "rejected", &store])?;
    assert!(rejected.status.success());
    assert!(String::from_utf8_lossy(&rejected.stdout).contains("no rejected intentions"));

    // `node stop` with a watch attached: the watch ends with a status, the daemon exits.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_lattice"))
        .arg("--data-dir")
        .arg(&a_dir)
        .args(["--json", "store", "watch", &store])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The watch is attached once it has seen a change made after it started: write until
    // one shows up.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().ok_or("no stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let start = Instant::now();
    let first = loop {
        json(&a_dir, &["put", &store, "w", "1"])?;
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            break line;
        }
        if start.elapsed() > DEADLINE {
            return Err("the watch never reported a change".into());
        }
    };
    assert!(first.contains("kv"), "{first}");
    a.stop()?;
    let status = watch.wait()?;
    assert!(
        !status.success(),
        "the watch ends with the daemon's final status"
    );
    b.stop()?;
    Ok(())
}
