//! The `tandem` binary: parse the command line and run the chosen command.

use clap::Parser;
use std::process::ExitCode;
use tandem::cli::{Cli, Command};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Run(a) => tandem::commands::run(a),
        Command::Check(a) => tandem::commands::check(a),
        Command::Demo(a) => tandem::commands::demo(a),
        Command::Echo(a) => tandem::commands::echo(a),
        Command::Await(a) => tandem::commands::await_ready(a),
        Command::CopySelf(a) => tandem::commands::copy_self(a),
        Command::Iptables(a) => tandem::commands::iptables(a),
        Command::Completions(a) => tandem::commands::completions(a),
    }
}
