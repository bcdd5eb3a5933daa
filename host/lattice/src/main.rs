//! `lattice`: the command-line entry point.
//!
//! Every subcommand takes `--data-dir` (or `LATTICE_DATA_DIR`) and `--json`. Errors print one
//! line that says what to do next and exit non-zero.
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod bench;
mod bench_store;
mod bench_sync;
mod cli;
mod demo;
mod log_cmd;
mod output;
mod serve_cmd;
mod store_cmd;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_tracing(cli.verbose);
    let out = output::Output::new(cli.json);
    match run(cli, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            out.error(&err);
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
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
    let data_dir = cli.data_dir();
    match cli.command {
        cli::Command::Demo(args) => demo::run(args, out),
        cli::Command::Bench(cli::BenchCommand::Log(args)) => bench::log(args, out),
        cli::Command::Bench(cli::BenchCommand::Store(args)) => bench_store::run(args, out),
        cli::Command::Bench(cli::BenchCommand::Sync(args)) => bench_sync::run(args, out),
        cli::Command::Log(cmd) => log_cmd::run(cmd, &data_dir, out),
        cli::Command::Serve(args) => serve_cmd::run(args, &data_dir, out),
        cli::Command::Module(cmd) => store_cmd::module(cmd, &data_dir, out),
        cli::Command::Store(cmd) => store_cmd::store(cmd, &data_dir, out),
        cli::Command::Put { store, key, value } => store_cmd::call_kv(
            &data_dir,
            out,
            &store,
            "put",
            serde_json::json!({"key": key, "value": value}),
        ),
        cli::Command::Get { store, key } => store_cmd::call_kv(
            &data_dir,
            out,
            &store,
            "get",
            serde_json::json!({"key": key}),
        ),
        cli::Command::Delete { store, key } => store_cmd::call_kv(
            &data_dir,
            out,
            &store,
            "delete",
            serde_json::json!({"key": key}),
        ),
        cli::Command::List { store, prefix } => store_cmd::call_kv(
            &data_dir,
            out,
            &store,
            "list",
            serde_json::json!({"prefix": prefix}),
        ),
        cli::Command::Inspect { store, key } => store_cmd::call_kv(
            &data_dir,
            out,
            &store,
            "inspect",
            serde_json::json!({"key": key}),
        ),
        cli::Command::Node(cli::NodeCommand::Id) => {
            let key = data_dir.load_or_create_identity()?;
            out.record(
                &format!("node {}", key.public()),
                serde_json::json!({ "node": key.public().to_string() }),
            );
            Ok(())
        }
    }
}
