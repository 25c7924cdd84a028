//! `dmaheap`: list heaps and other sources, allocate from them, explain which heap a request
//! gets (for which devices), probe which sources devices take, show the pool statistics
//! running processes publish, and benchmark pools.

mod alloc;
mod bench;
mod explain;
mod list;
mod probe;
mod stats;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dmaheap",
    version,
    about = "DMA-BUF heaps: discover, allocate, explain, pool"
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace); RUST_LOG works too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List heaps and other sources with their properties and whether this user may use them.
    List(list::Args),
    /// Allocate buffers, touch and name them, and report where they came from.
    Alloc(alloc::Args),
    /// Show which heaps a request would get, in order, and why each is in or out.
    Explain(explain::Args),
    /// Ask devices which sources they take, by importing a small buffer from each.
    Probe(probe::Args),
    /// Show pool statistics published by running processes.
    Stats(stats::Args),
    /// Measure pools against direct allocation, side by side, and print the ratios.
    Bench(bench::Args),
    /// (internal) Hold memory to create memory pressure for `bench`.
    #[command(hide = true)]
    BenchHog(bench::HogArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_micros()
        .init();
    let result = match cli.command {
        Command::List(args) => list::run(args),
        Command::Alloc(args) => alloc::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchHog(args) => bench::hog(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dmaheap: {e}");
            ExitCode::FAILURE
        }
    }
}
