//! The `lattice` binary end to end: log create/append/status/verify, bad arguments, and a
//! small benchmark run whose JSON carries the documented keys.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn lattice(dir: &Path, args: &[&str]) -> Result<Output, std::io::Error> {
    Command::new(env!("CARGO_BIN_EXE_lattice"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
}

fn json_lines(out: &Output) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let text = String::from_utf8(out.stdout.clone())?;
    Ok(text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

#[test]
fn create_append_status_and_verify_a_store() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = lattice(dir.path(), &["--json", "log", "create", "--ops", "hello"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created = json_lines(&out)?;
    let store = created[0]["store"].as_str().ok_or("store")?.to_string();
    assert_eq!(store.len(), 64);
    // A unique prefix is enough.
    let prefix = &store[..10];
    for i in 0..3 {
        let out = lattice(
            dir.path(),
            &["--json", "log", "append", prefix, &format!("write {i}")],
        )?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(json_lines(&out)?[0]["seq"], i + 2);
    }
    let out = lattice(dir.path(), &["--json", "log", "status", &store])?;
    let status = &json_lines(&out)?[0];
    assert_eq!(status["head_seq"], 4);
    assert_eq!(status["floating"], 0);
    let out = lattice(dir.path(), &["--json", "log", "verify", &store])?;
    assert!(out.status.success());
    let report = &json_lines(&out)?[0];
    assert_eq!(report["ok"], true);
    assert_eq!(report["records"], 4);
    // The identity key file is private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("identity.key"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    Ok(())
}

#[test]
fn bad_arguments_fail_with_a_clear_message() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = lattice(dir.path(), &["log", "verify", "not-hex!"])?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(err.contains("is not hex"), "{err}");
    let out = lattice(dir.path(), &["log", "verify", "abcdef"])?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(err.contains("lattice log create"), "{err}");
    let out = lattice(dir.path(), &["bench", "log", "--count", "0"])?;
    assert!(!out.status.success());
    Ok(())
}

#[test]
fn a_corrupt_log_is_reported_not_panicked_on() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = lattice(dir.path(), &["--json", "log", "create"])?;
    let store = json_lines(&out)?[0]["store"]
        .as_str()
        .ok_or("store")?
        .to_string();
    let path = dir.path().join("stores").join(&store).join("log.db");
    let mut bytes = std::fs::read(&path)?;
    let len = bytes.len();
    bytes.truncate(len / 3);
    std::fs::write(&path, &bytes)?;
    let out = lattice(dir.path(), &["log", "verify", &store])?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(err.starts_with("error:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    Ok(())
}

#[test]
fn bench_log_prints_the_documented_json_keys() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = lattice(dir.path(), &["--json", "bench", "log", "--count", "300"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out)?;
    let last = lines.last().ok_or("no output")?;
    for key in ["authored_per_s", "ingested_per_s", "floating_per_s"] {
        assert!(last[key].as_f64().ok_or(key)? > 0.0, "{key}");
    }
    Ok(())
}
