//! The `dbgrant` binary: parses arguments and hands off to the library.

mod allocator;

use std::process::ExitCode;

use clap::Parser;
use dbgrant::cli::{Cli, Command};

fn main() -> ExitCode {
    dbgrant::install_crypto_provider();
    match Cli::parse().command {
        Command::Version => {
            println!("dbgrant {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Crdgen(args) => exit("dbgrant crdgen", dbgrant::runtime::crdgen::run(&args)),
        Command::Run(args) => match runtime() {
            Ok(rt) => exit("dbgrant", rt.block_on(dbgrant::operator::run(args))),
            Err(e) => exit("dbgrant", Err(e)),
        },
        Command::Access(args) => {
            exit("dbgrant access", runtime().and_then(|rt| rt.block_on(dbgrant::preview::access::run(&args))))
        }
        Command::Plan(args) => match runtime().and_then(|rt| rt.block_on(dbgrant::preview::run(&args))) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                exit("dbgrant plan", Err(e));
                ExitCode::from(dbgrant::preview::EXIT_ERROR)
            }
        },
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// Success, or `who: error` (with its causes) on standard error.
fn exit(who: &str, result: anyhow::Result<()>) -> ExitCode {
    let Err(e) = result else { return ExitCode::SUCCESS };
    eprintln!("{who}: {e:#}");
    ExitCode::FAILURE
}
