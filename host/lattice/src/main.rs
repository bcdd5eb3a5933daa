//! `lattice`: the command-line entry point.
//!
//! Every subcommand takes `--data-dir` (or `LATTICE_DATA_DIR`) and `--json`. Errors print one
//! line that says what to do next and exit non-zero.
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod api;
mod api_blobs;
mod api_fs;
mod bench;
mod bench_cas;
mod bench_daemon;
mod bench_fs;
mod bench_prune;
mod bench_store;
mod bench_sync;
mod cas_cmd;
mod cli;
mod client_cmd;
mod daemon_cmd;
mod demo;
mod demo_fs;
mod fs_cmd;
mod fs_sync;
mod log_cmd;
mod output;
mod sim_cmd;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    // Simulated nodes warn about the faults a simulation injects on purpose.
    let simulating = matches!(cli.command, cli::Command::Sim(_));
    init_tracing(cli.verbose, simulating);
    let out = output::Output::new(cli.json);
    match run(cli, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            out.error(&err);
            ExitCode::FAILURE
        }
    }
}

/// Prints a command-line usage error (as `{"error", "code": "usage"}` with `--json`);
/// `--help` and `--version` print normally.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let json = std::env::args().any(|a| a == "--json");
    if json && !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let text = e.render().to_string();
        let first = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("bad arguments")
            .trim_start_matches("error: ")
            .to_string();
        output::Output::new(true).error(&output::CliError::new("usage", first).into());
        return ExitCode::from(2);
    }
    let _ = e.print();
    ExitCode::from(if e.use_stderr() { 2 } else { 0 })
}

fn init_tracing(verbose: u8, simulating: bool) {
    let default = match verbose {
        0 if simulating => "error",
        // iroh-gossip warns about every dropped neighbour; peers come and go by design.
        0 => "warn,iroh_gossip=error",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LATTICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: cli::Cli, out: &output::Output) -> anyhow::Result<()> {
    use client_cmd::ClientCommand;
    let data_dir = cli.data_dir();
    let embedded = cli.embedded;
    let client = |cmd: ClientCommand| client_cmd::run(cmd, &data_dir, embedded, out);
    let kv = |store: String, method: &'static str, args: serde_json::Value| {
        client(ClientCommand::Kv {
            store,
            method,
            args,
        })
    };
    match cli.command {
        cli::Command::Daemon(args) => daemon_cmd::run(args, &data_dir, out),
        cli::Command::Demo(args) => demo::run(args, out),
        cli::Command::Sim(cli::SimCommand::Run(args)) => sim_cmd::run(args, out),
        cli::Command::Sim(cli::SimCommand::Soak(args)) => sim_cmd::soak(args, out),
        cli::Command::Bench(cli::BenchCommand::Log(args)) => bench::log(args, out),
        cli::Command::Bench(cli::BenchCommand::Store(args)) => bench_store::run(args, out),
        cli::Command::Bench(cli::BenchCommand::Sync(args)) => bench_sync::run(args, out),
        cli::Command::Bench(cli::BenchCommand::Daemon(args)) => bench_daemon::run(args, out),
        cli::Command::Bench(cli::BenchCommand::Prune(args)) => bench_prune::run(args, out),
        cli::Command::Bench(cli::BenchCommand::Cas(args)) => bench_cas::run(args, out),
        cli::Command::Bench(cli::BenchCommand::Fs(args)) => bench_fs::run(args, out),
        cli::Command::Log(cmd) => log_cmd::run(cmd, &data_dir, out),
        cli::Command::Store(cli::StoreCommand::Rebuild { store }) => {
            rebuild(&data_dir, &store, out)
        }
        cli::Command::Node(cli::NodeCommand::Id) => {
            let key = data_dir.load_or_create_identity()?;
            out.record(
                &format!("node {}", key.public()),
                serde_json::json!({ "node": key.public().to_string() }),
            );
            Ok(())
        }
        cli::Command::Node(cmd) => client(ClientCommand::Node(cmd)),
        cli::Command::Module(cmd) => client(ClientCommand::Module(cmd)),
        cli::Command::Store(cmd) => client(ClientCommand::Store(cmd)),
        cli::Command::Cas(cmd) => client(ClientCommand::Cas(cmd)),
        cli::Command::Fs(cmd) => client(ClientCommand::Fs(cmd)),
        cli::Command::Put {
            store,
            key,
            value,
            file,
        } => {
            let value = put_value(value, file)?;
            kv(
                store,
                "put",
                serde_json::json!({"key": key, "value": value}),
            )
        }
        cli::Command::Get { store, key } => kv(store, "get", serde_json::json!({"key": key})),
        cli::Command::Delete { store, key } => kv(store, "delete", serde_json::json!({"key": key})),
        cli::Command::List { store, prefix } => {
            kv(store, "list", serde_json::json!({"prefix": prefix}))
        }
        cli::Command::Inspect { store, key } => {
            kv(store, "inspect", serde_json::json!({"key": key}))
        }
    }
}

/// The value of `lattice put`: the argument, stdin for `-`, or the file. Text stays text;
/// other bytes are passed as `{"hex": …}`.
fn put_value(
    value: Option<String>,
    file: Option<std::path::PathBuf>,
) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context as _;
    use std::io::Read as _;
    let bytes = match (value, file) {
        (_, Some(path)) => {
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
        }
        (Some(v), None) if v == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the value from stdin")?;
            buf
        }
        (Some(v), None) => return Ok(serde_json::Value::String(v)),
        (None, None) => anyhow::bail!("give a value, `-` for stdin, or --file F"),
    };
    Ok(match String::from_utf8(bytes) {
        Ok(text) => serde_json::Value::String(text),
        Err(e) => serde_json::json!({ "hex": hex::encode(e.into_bytes()) }),
    })
}

/// `lattice store rebuild`: in this process, with the daemon stopped.
fn rebuild(dir: &lattice_node::DataDir, store: &str, out: &output::Output) -> anyhow::Result<()> {
    let node = lattice_node::Node::open(dir.clone())?;
    let mut st = node.open_store(node.find_store(store)?)?;
    // Opening caught up from the last durable cursor; compare that with a replay from scratch.
    let before = st.state_digest()?;
    out.progress("rebuilding state from the log…");
    let report = st.rebuild()?;
    let after = st.state_digest()?;
    out.record(
        &format!(
            "rebuilt: {} applied, {} rejected, projected up to {}; state {}",
            report.applied,
            report.rejected,
            report.cursor,
            if before == after {
                "unchanged"
            } else {
                "differed from the replay and was replaced"
            }
        ),
        serde_json::json!({
            "applied": report.applied, "rejected": report.rejected, "cursor": report.cursor,
            "digest_before": before.to_string(), "digest_after": after.to_string(),
        }),
    );
    st.close()?;
    Ok(())
}
