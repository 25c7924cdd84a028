//! `dmaheap`: list heaps, allocate from them, and (as the library grows) explain choices and
//! show pool statistics.

mod alloc;
mod list;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dmaheap",
    version,
    about = "DMA-BUF heaps: discover, allocate, explain"
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
    /// List heaps and backends with their properties and whether this user may use them.
    List(list::Args),
    /// Allocate buffers, touch and name them, and report where they came from.
    Alloc(alloc::Args),
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dmaheap: {e}");
            ExitCode::FAILURE
        }
    }
}
