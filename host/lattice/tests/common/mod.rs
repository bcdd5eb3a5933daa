//! Helpers the `lattice` integration tests share: running the binary and starting daemons.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// Runs `lattice --data-dir <dir> <args…>`.
pub fn lattice(dir: &Path, args: &[&str]) -> Result<Output, std::io::Error> {
    Command::new(env!("CARGO_BIN_EXE_lattice"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
}

/// Runs a command with `--json` and returns its last JSON line; fails with its stderr.
pub fn json(dir: &Path, args: &[&str]) -> Result<Value, Box<dyn std::error::Error>> {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = lattice(dir, &full)?;
    if !out.status.success() {
        return Err(format!(
            "lattice {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8(out.stdout)?;
    let last = text.lines().last().ok_or("no output")?;
    Ok(serde_json::from_str(last)?)
}

/// Starts `lattice daemon <extra…>` on `dir` and returns once it reports it is running.
pub fn spawn_daemon(dir: &Path, extra: &[&str]) -> Result<Child, Box<dyn std::error::Error>> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lattice"))
        .arg("--data-dir")
        .arg(dir)
        .args(["--json", "daemon"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let event: Value =
        serde_json::from_str(&line).map_err(|e| format!("daemon did not start ({e}): {line}"))?;
    if event["event"] != "running" {
        return Err(format!("unexpected first line: {line}").into());
    }
    Ok(child)
}

/// Runs a command with `--json` that must fail; returns (exit code, the JSON error object).
#[allow(dead_code, reason = "not every test file checks failures")]
pub fn fails_json(dir: &Path, args: &[&str]) -> Result<(i32, Value), Box<dyn std::error::Error>> {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = lattice(dir, &full)?;
    if out.status.success() {
        return Err(format!("lattice {} succeeded but should fail", args.join(" ")).into());
    }
    let text = String::from_utf8(out.stdout)?;
    let last = text.lines().last().ok_or("no JSON error object")?;
    Ok((out.status.code().unwrap_or(-1), serde_json::from_str(last)?))
}
