//! The `dbgrant` binary: parses arguments and hands off to the library.

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
        Command::Run(args) => match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(rt) => exit("dbgrant", rt.block_on(dbgrant::operator::run(args))),
            Err(e) => exit("dbgrant", Err(anyhow::anyhow!("cannot start the async runtime: {e}"))),
        },
    }
}

/// Success, or `who: error` (with its causes) on standard error.
fn exit(who: &str, result: anyhow::Result<()>) -> ExitCode {
    let Err(e) = result else { return ExitCode::SUCCESS };
    eprintln!("{who}: {e:#}");
    ExitCode::FAILURE
}
