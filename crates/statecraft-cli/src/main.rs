//! The `statecraft` command.

mod bench;
mod breaker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Shared state for many instances of a service.
#[derive(Debug, Parser)]
#[command(name = "statecraft", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure backends: p50/p99 latency and throughput of get, put,
    /// increment and batch operations at concurrency 1 and N.
    Bench(bench::BenchArgs),
    /// See and steer the shared circuit breakers of a store: list, show,
    /// open, close, reset.
    Breaker(breaker::BreakerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Bench(args) => runtime.block_on(bench::run(args)),
        Command::Breaker(args) => runtime.block_on(breaker::run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
