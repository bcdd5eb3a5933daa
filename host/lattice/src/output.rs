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
