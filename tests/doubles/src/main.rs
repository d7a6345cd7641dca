//! `dbgrant-doubles`: run a test double as a standalone process.
//!
//! ```text
//! dbgrant-doubles mongo --listen 127.0.0.1:0 --user admin:secret --latency-ms 2
//! ```
//!
//! Once listening, prints one JSON line describing where (`addr`, `uri`, and
//! with `--tls-dir` the CA file), then serves until SIGINT/SIGTERM.

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand};
use dbgrant_doubles::mongo::{MongoDouble, MongoDoubleConfig, ScramUser, TestPki};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "dbgrant-doubles", about = "Test doubles for dbgrant's backends")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A MongoDB wire-protocol server with SCRAM and the user/role commands.
    Mongo(MongoArgs),
}

#[derive(Args)]
struct MongoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// A user-admin login, as NAME:PASSWORD (repeatable).
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    users: Vec<String>,
    /// A login without user-management rights, as NAME:PASSWORD (repeatable).
    #[arg(long = "read-only-user", value_name = "NAME:PASSWORD")]
    read_only_users: Vec<String>,
    /// Time every command takes, in milliseconds.
    #[arg(long, default_value_t = 2)]
    latency_ms: u64,
    /// Version reported by buildInfo.
    #[arg(long, default_value = "8.0.4")]
    server_version: String,
    /// Serve TLS with a generated CA; writes ca.pem and client.pem here.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
}

fn parse_login(spec: &str) -> Result<(String, String)> {
    let (name, password) = spec.split_once(':').ok_or_else(|| anyhow!("expected NAME:PASSWORD, got {spec:?}"))?;
    if name.is_empty() {
        return Err(anyhow!("empty user name in {spec:?}"));
    }
    Ok((name.to_string(), password.to_string()))
}

async fn run_mongo(args: MongoArgs) -> Result<()> {
    let mut config = MongoDoubleConfig {
        listen: args.listen,
        latency: Duration::from_millis(args.latency_ms),
        server_version: args.server_version,
        ..MongoDoubleConfig::default()
    };
    for spec in &args.users {
        let (name, password) = parse_login(spec)?;
        config.users.push(ScramUser::admin(name, password));
    }
    for spec in &args.read_only_users {
        let (name, password) = parse_login(spec)?;
        config.users.push(ScramUser::read_only(name, password));
    }
    let mut ca_file = None;
    if let Some(dir) = &args.tls_dir {
        let pki = TestPki::generate()?;
        let files = pki.write_files(dir).with_context(|| format!("writing PKI to {}", dir.display()))?;
        ca_file = Some(files.ca_file.display().to_string());
        config.tls = Some(pki.server_tls_config());
    }
    let double = MongoDouble::start(config).await?;
    let ready = serde_json::json!({
        "double": "mongo",
        "addr": double.addr().to_string(),
        "uri": double.uri(),
        "tls_ca_file": ca_file,
    });
    println!("{ready}");
    wait_for_signal().await?;
    double.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Mongo(args) => run_mongo(args).await,
    }
}
