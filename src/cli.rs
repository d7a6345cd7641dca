//! Command-line interface: `dbgrant run`, `dbgrant crdgen`, `dbgrant version`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// dbgrant keeps MongoDB and Azure Cosmos DB access in line with
/// Microsoft Entra ID groups, users and service principals, declared as
/// Kubernetes resources.
#[derive(Debug, Parser)]
#[command(name = "dbgrant", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator.
    Run(RunArgs),
    /// Write the CustomResourceDefinitions as YAML, one file per kind.
    Crdgen(CrdgenArgs),
    /// Print the version and build information.
    Version,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options for `dbgrant run`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Kubeconfig file; defaults to in-cluster configuration, then
    /// `$KUBECONFIG` / `~/.kube/config`.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// The operator's own namespace: where target Secrets and the leader
    /// Lease live.
    #[arg(long, env = "DBGRANT_NAMESPACE", default_value = "dbgrant-system")]
    pub namespace: String,

    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "DBGRANT_METRICS_ADDR", default_value = "127.0.0.1:8080")]
    pub metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "DBGRANT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter, in `tracing` EnvFilter syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info,kube=warn,mongodb=warn")]
    pub log_filter: String,

    /// Elect a leader through a Lease before reconciling (needed with more
    /// than one replica).
    #[arg(long, env = "DBGRANT_LEADER_ELECT", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,

    /// Name of the leader-election Lease.
    #[arg(long, env = "DBGRANT_LEASE_NAME", default_value = "dbgrant-leader")]
    pub lease_name: String,

    /// Lease duration: how long a crashed leader keeps the lock.
    #[arg(long, env = "DBGRANT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// Identity in the Lease; defaults to `$POD_NAME` or the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Reconciles run at once, per controller. They wait on the apiserver
    /// and the databases, not the CPU, and writes to one target are
    /// serialised anyway, so this can be generous.
    #[arg(long, env = "DBGRANT_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Full resync interval: drift detection and status refresh.
    #[arg(long, env = "DBGRANT_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,
}

/// Options for `dbgrant crdgen`.
#[derive(Clone, Debug, Args)]
pub struct CrdgenArgs {
    /// Directories to write `<plural>.yaml` files into. With none, print
    /// all CRDs to stdout as one multi-document YAML stream.
    #[arg(long = "out", value_name = "DIR")]
    pub out: Vec<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 30s or 5m: {e}"))
}
