//! The `dbgrant` binary: parses arguments and hands off to the library.

use std::process::ExitCode;

use clap::Parser;
use dbgrant::cli::{Cli, Command};

fn main() -> ExitCode {
    dbgrant::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("dbgrant {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Crdgen(args) => match dbgrant::runtime::crdgen::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dbgrant crdgen: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("dbgrant: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(dbgrant::operator::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("dbgrant: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
