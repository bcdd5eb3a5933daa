//! Human and JSON output: the only place that prints.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the CLI's output module"
)]

use std::io::Write as _;

/// Where results and progress go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Output {
        Output { json }
    }

    /// True with `--json`.
    pub(crate) fn json(&self) -> bool {
        self.json
    }

    /// Prints one result: the text for people, or the JSON object.
    pub(crate) fn record(&self, text: &str, json: serde_json::Value) {
        // A reader that went away (a closed pipe) must not take the process down.
        let mut stdout = std::io::stdout().lock();
        let _ = if self.json {
            writeln!(stdout, "{json}")
        } else {
            writeln!(stdout, "{text}")
        };
        let _ = stdout.flush();
    }

    /// Prints a progress line to stderr (people only).
    pub(crate) fn progress(&self, text: &str) {
        if !self.json {
            let _ = writeln!(std::io::stderr(), "{text}");
        }
    }

    /// Prints an error: one line on stderr (and, with `--json`, a JSON object on stdout:
    /// `{"error": text, "code": stable code}`; codes are listed in `docs/api.md`).
    pub(crate) fn error(&self, err: &anyhow::Error) {
        let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
        let code = err
            .chain()
            .find_map(|e| e.downcast_ref::<CliError>())
            .map_or("error", |e| e.code.as_str());
        if self.json {
            println!(
                "{}",
                serde_json::json!({ "error": chain.join(": "), "code": code })
            );
        }
        eprintln!("error: {}", chain.join(": "));
    }
}

/// An error with a stable machine-readable code (printed as `code` under `--json`).
#[derive(Debug)]
pub(crate) struct CliError {
    code: String,
    message: String,
}

impl CliError {
    pub(crate) fn new(code: impl Into<String>, message: impl Into<String>) -> CliError {
        CliError {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// A one-line progress meter on stderr, for people only: drawn when stderr is a terminal
/// and `--json` is off, redrawn at most every [`Meter::EVERY`].
#[derive(Debug)]
pub(crate) struct Meter {
    on: bool,
    what: String,
    total: Option<u64>,
    started: std::time::Instant,
    drawn: Option<std::time::Instant>,
}

impl Meter {
    /// The shortest time between two redraws.
    const EVERY: std::time::Duration = std::time::Duration::from_millis(100);

    /// A meter for `what`, out of `total` bytes when known.
    pub(crate) fn new(out: &Output, what: &str, total: Option<u64>) -> Meter {
        use std::io::IsTerminal as _;
        Meter {
            on: !out.json && std::io::stderr().is_terminal(),
            what: what.to_string(),
            total,
            started: std::time::Instant::now(),
            drawn: None,
        }
    }

    /// Shows `done` bytes.
    pub(crate) fn show(&mut self, done: u64) {
        if !self.on || self.drawn.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return;
        }
        self.drawn = Some(std::time::Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs / 1e6;
        let line = match self.total {
            Some(total) if total > 0 => format!(
                "{} {} / {} ({:.0}%) {rate:.1} MB/s",
                self.what,
                mib(done),
                mib(total),
                done as f64 * 100.0 / total as f64
            ),
            _ => format!("{} {} {rate:.1} MB/s", self.what, mib(done)),
        };
        let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
    }

    /// Clears the meter's line.
    pub(crate) fn finish(&mut self) {
        if self.on && self.drawn.is_some() {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

/// Bytes for people, in MiB with one decimal.
pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}
