//! `lattice cas …` against real daemons on loopback: blobs of every boundary size put on one
//! node and fetched by a member of the store on another, ranges, stdin, pins, status, and
//! the errors a script sees (codes under `--json`). A blob is reachable only through a store
//! that holds it.

use std::path::Path;
use std::process::{Child, Stdio};

use serde_json::Value;

mod common;
use common::{fails_json, json, lattice, spawn_daemon};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Deterministic bytes that differ in every position.
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Runs a `--json` command that must fail; returns its error code.
fn fails_with(dir: &Path, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let (_, error) = fails_json(dir, args)?;
    Ok(error["code"].as_str().unwrap_or_default().to_string())
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(v: &Value, field: &str) -> Result<String, Box<dyn std::error::Error>> {
    Ok(v[field]
        .as_str()
        .ok_or_else(|| format!("no {field} in {v}"))?
        .to_string())
}

#[test]
fn blobs_put_on_one_daemon_are_fetched_verified_by_a_member_on_another() -> TestResult {
    let temp = tempfile::tempdir()?;
    let [a_dir, b_dir] = ["a", "b"].map(|n| temp.path().join(n));
    let _a = Daemon(spawn_daemon(&a_dir, &[])?);
    let _b = Daemon(spawn_daemon(&b_dir, &[])?);
    let a_key = text(&json(&a_dir, &["node", "id"])?, "node")?;
    let store = text(
        &json(
            &a_dir,
            &["store", "create", "--type", "kv", "--name", "blobs"],
        )?,
        "store",
    )?;
    // A store B never joins: its blobs stay out of B's reach.
    let private = text(
        &json(
            &a_dir,
            &["store", "create", "--type", "kv", "--name", "private"],
        )?,
        "store",
    )?;
    let token = text(&json(&a_dir, &["store", "invite", &store])?, "token")?;
    json(&b_dir, &["store", "join", &token])?;

    let files = temp.path().join("files");
    std::fs::create_dir(&files)?;
    let kib = 1024;
    for size in [
        0,
        1,
        kib - 1,
        kib,
        kib + 1,
        16 * kib,
        16 * kib + 1,
        1 << 20,
        (1 << 20) + 7,
    ] {
        let data = bytes(size, size as u8);
        let source = files.join(format!("in-{size}"));
        std::fs::write(&source, &data)?;
        let put = json(&a_dir, &["cas", "put", &store, &source.to_string_lossy()])?;
        let hash = text(&put, "hash")?;
        assert_eq!(hash, blake3::hash(&data).to_hex().as_str(), "size {size}");
        assert_eq!(put["size"], size as u64);

        // Not on B yet: `--local` says so; a plain get fetches it from A.
        assert_eq!(
            fails_with(&b_dir, &["cas", "get", &store, &hash, "--local", "-o", "x"])?,
            "not_found"
        );
        let target = files.join(format!("out-{size}"));
        let got = json(
            &b_dir,
            &["cas", "get", &store, &hash, "-o", &target.to_string_lossy()],
        )?;
        assert_eq!(std::fs::read(&target)?, data, "size {size}");
        assert_eq!(got["written"], size as u64);
        assert_eq!(got["fetched_from"], a_key.as_str(), "size {size}");
        assert_eq!(got["fetched_bytes"], size as u64, "size {size}");
        // Held on B now: read locally, nothing fetched.
        let again = json(
            &b_dir,
            &[
                "cas",
                "get",
                &store,
                &hash,
                "--local",
                "-o",
                &target.to_string_lossy(),
            ],
        )?;
        assert_eq!(again["fetched_from"], "");
        assert_eq!(std::fs::read(&target)?, data);
        // Ranges, to stdout.
        if size > 10 {
            let out = lattice(&b_dir, &["cas", "get", &store, &hash, "--range", "3..10"])?;
            assert!(out.status.success());
            assert_eq!(out.stdout, &data[3..10], "size {size}");
            let tail = format!("{}..", size - 2);
            let out = lattice(&b_dir, &["cas", "get", &store, &hash, "--range", &tail])?;
            assert_eq!(out.stdout, &data[size - 2..], "size {size}");
        }
    }

    // Stdin, pinning, status.
    let mut put = std::process::Command::new(env!("CARGO_BIN_EXE_lattice"))
        .arg("--data-dir")
        .arg(&a_dir)
        .args(["--json", "cas", "put", &store, "-", "--pin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let piped = bytes(300_000, 9);
    {
        use std::io::Write as _;
        let mut stdin = put.stdin.take().ok_or("no stdin")?;
        stdin.write_all(&piped)?;
    }
    let out = put.wait_with_output()?;
    assert!(out.status.success());
    let put: Value = serde_json::from_str(String::from_utf8(out.stdout)?.trim())?;
    let piped_hash = text(&put, "hash")?;
    assert_eq!(piped_hash, blake3::hash(&piped).to_hex().as_str());
    assert_eq!(put["pins"], 1);
    let stat = json(&a_dir, &["cas", "stat", &store, &piped_hash])?;
    assert_eq!(
        (stat["size"].as_u64(), stat["pins"].as_u64()),
        (Some(300_000), Some(1))
    );
    assert_eq!(
        json(&a_dir, &["cas", "unpin", &store, &piped_hash])?["pins"],
        0
    );
    // Pinning on B fetches it first.
    assert_eq!(
        json(&b_dir, &["cas", "pin", &store, &piped_hash])?["pins"],
        1
    );
    let status = json(&b_dir, &["cas", "status", &store, "--list"])?;
    let items = status["items"].as_array().ok_or("no items")?;
    assert!(
        items
            .iter()
            .any(|b| b["hash"] == piped_hash.as_str() && b["pins"] == 1)
    );
    assert_eq!(status["blobs"].as_u64(), Some(items.len() as u64));
    assert!(status["pinned"].as_u64() >= Some(1));

    // Scoped: a blob of the private store is not reachable through the shared one, and B
    // cannot name the private store at all.
    let secret = files.join("secret");
    std::fs::write(&secret, b"only in the private store")?;
    let secret_hash = text(
        &json(&a_dir, &["cas", "put", &private, &secret.to_string_lossy()])?,
        "hash",
    )?;
    let out = files.join("leak").to_string_lossy().into_owned();
    assert_eq!(
        fails_with(&b_dir, &["cas", "get", &store, &secret_hash, "-o", &out])?,
        "blob_unavailable"
    );
    assert!(!files.join("leak").exists(), "a failed get left a file");
    assert_eq!(
        fails_with(&b_dir, &["cas", "get", &private, &secret_hash, "-o", &out])?,
        "not_found"
    );
    assert_eq!(
        fails_with(&a_dir, &["cas", "stat", &store, &secret_hash])?,
        "not_found"
    );

    // Bad arguments.
    assert_eq!(
        fails_with(&a_dir, &["cas", "stat", &store, "not-a-hash"])?,
        "invalid_argument"
    );
    assert_eq!(
        fails_with(&a_dir, &["cas", "get", &store, &piped_hash])?,
        "invalid_argument",
        "--json without -o"
    );
    assert_eq!(
        fails_with(
            &a_dir,
            &[
                "cas",
                "get",
                &store,
                &piped_hash,
                "--range",
                "9..2",
                "-o",
                &out
            ]
        )?,
        "invalid_argument"
    );
    assert_eq!(
        fails_with(
            &a_dir,
            &[
                "cas",
                "get",
                &store,
                &piped_hash,
                "--range",
                "299990..300001",
                "-o",
                &out
            ]
        )?,
        "out_of_range"
    );
    let missing = files.join("missing").to_string_lossy().into_owned();
    assert!(
        !lattice(&a_dir, &["cas", "put", &store, &missing])?
            .status
            .success()
    );

    // Collection: with the default grace nothing young goes; with none, what nothing keeps
    // goes (on A the unpinned blobs), what is pinned stays (on B the pinned one).
    assert_eq!(json(&a_dir, &["cas", "gc"])?["deleted"], 0);
    let gc = json(&a_dir, &["cas", "gc", "--grace", "0"])?;
    assert!(gc["deleted"].as_u64() >= Some(10), "{gc}");
    assert_eq!(
        fails_with(&a_dir, &["cas", "stat", &store, &piped_hash])?,
        "not_found"
    );
    let left = json(&a_dir, &["cas", "status", &store])?;
    assert_eq!(left["loose"], 0, "{left}");
    json(&b_dir, &["cas", "gc", "--grace", "0"])?;
    assert_eq!(
        json(&b_dir, &["cas", "stat", &store, &piped_hash])?["pins"],
        1
    );
    Ok(())
}

/// Writes `size` pseudo-random bytes to `path`; returns their BLAKE3 hash (hex).
fn random_file(path: &Path, size: usize, seed: u64) -> std::io::Result<String> {
    use std::io::Write as _;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = blake3::Hasher::new();
    let mut state = seed | 1;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in chunk.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        let n = left.min(chunk.len());
        file.write_all(&chunk[..n])?;
        hasher.update(&chunk[..n]);
        left -= n;
    }
    file.flush()?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn file_hash(path: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// Waits until the node on `dir` has at least `bytes` of blob `hash` in its partial files
/// (allocated blocks of the data file, which starts sparse), checking every few ms.
fn until_partial(dir: &Path, hash: &str, size: u64, bytes: u64) -> TestResult {
    use std::os::unix::fs::MetadataExt as _;
    let path = dir.join("cas/partial").join(format!("{hash}.{size}.data"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if std::fs::metadata(&path).is_ok_and(|m| m.blocks() * 512 >= bytes) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{} never held {bytes} bytes", path.display()).into());
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Starts `lattice cas get` of `hash` into `out` on the node of `dir`, in the background.
fn start_get(dir: &Path, store: &str, hash: &str, out: &Path) -> std::io::Result<Child> {
    std::process::Command::new(env!("CARGO_BIN_EXE_lattice"))
        .arg("--data-dir")
        .arg(dir)
        .args(["--json", "cas", "get", store, hash, "-o"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// `lattice cas get` until a peer gives the blob (a restarted peer is dialled again only
/// after the caller's backoff for it has passed).
fn get_until_given(
    dir: &Path,
    store: &str,
    hash: &str,
    out: &Path,
) -> Result<Value, Box<dyn std::error::Error>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        match json(
            dir,
            &["cas", "get", store, hash, "-o", &out.to_string_lossy()],
        ) {
            Err(e)
                if e.to_string().contains("could give") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

#[test]
fn a_transfer_resumes_after_the_sender_or_the_receiver_is_killed() -> TestResult {
    let temp = tempfile::tempdir()?;
    let [a_dir, b_dir, c_dir] = ["a", "b", "c"].map(|n| temp.path().join(n));
    let mut a = Daemon(spawn_daemon(&a_dir, &[])?);
    let _b = Daemon(spawn_daemon(&b_dir, &[])?);
    let mut c = Daemon(spawn_daemon(&c_dir, &[])?);
    let store = text(
        &json(
            &a_dir,
            &["store", "create", "--type", "kv", "--name", "big"],
        )?,
        "store",
    )?;
    for dir in [&b_dir, &c_dir] {
        let token = text(&json(&a_dir, &["store", "invite", &store])?, "token")?;
        json(dir, &["store", "join", &token])?;
    }
    let size: u64 = 384 << 20;
    let source = temp.path().join("source");
    let hash = random_file(&source, size as usize, 77)?;
    assert_eq!(
        text(
            &json(&a_dir, &["cas", "put", &store, &source.to_string_lossy()])?,
            "hash"
        )?,
        hash
    );
    std::fs::remove_file(&source)?;

    // The sender dies (kill -9) while B receives; B keeps what verified and, with A back,
    // fetches only the rest.
    let out = temp.path().join("at-b");
    let mut getting = start_get(&b_dir, &store, &hash, &out)?;
    until_partial(&b_dir, &hash, size, size / 10)?;
    a.0.kill()?;
    a.0.wait()?;
    assert!(
        !getting.wait()?.success(),
        "the get finished before the sender died"
    );
    a = Daemon(spawn_daemon(&a_dir, &[])?);
    let got = get_until_given(&b_dir, &store, &hash, &out)?;
    let fetched = got["fetched_bytes"].as_u64().ok_or("no fetched_bytes")?;
    assert!(
        fetched > 0 && fetched <= size - size / 10,
        "B fetched {fetched} of {size} again"
    );
    assert_eq!(file_hash(&out)?, hash);

    // The receiver dies (kill -9) while C receives; back up, it resumes — from A or B.
    let out = temp.path().join("at-c");
    let mut getting = start_get(&c_dir, &store, &hash, &out)?;
    until_partial(&c_dir, &hash, size, size / 10)?;
    c.0.kill()?;
    c.0.wait()?;
    let _ = getting.wait()?;
    c = Daemon(spawn_daemon(&c_dir, &[])?);
    let got = get_until_given(&c_dir, &store, &hash, &out)?;
    let fetched = got["fetched_bytes"].as_u64().ok_or("no fetched_bytes")?;
    assert!(
        fetched > 0 && fetched <= size - size / 10,
        "C fetched {fetched} of {size} again"
    );
    assert_eq!(file_hash(&out)?, hash);
    let from = text(&got, "fetched_from")?;
    let keys = [&a_dir, &b_dir].map(|d| json(d, &["node", "id"]).map(|v| v["node"].clone()));
    assert!(
        keys.iter()
            .any(|k| k.as_ref().is_ok_and(|k| *k == from.as_str())),
        "C fetched from {from}, not a member"
    );
    drop((a, c));
    Ok(())
}
