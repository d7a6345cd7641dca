//! Command-line interface: `dbgrant run`, `dbgrant plan`, `dbgrant access`, `dbgrant crdgen`,
//! `dbgrant version`. Installed as `kubectl-dbgrant`, the binary is also a
//! kubectl plugin (`kubectl dbgrant plan …`).

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
    /// Show what applying manifests would change in the databases, before
    /// they are applied. Exit code: 0 no change, 2 changes, 3 something
    /// would be refused or is invalid, 1 error.
    Plan(PlanArgs),
    /// Who has what: per target, each Entra subject's roles and privileges
    /// or assignments, the bindings that grant them, and when they end.
    Access(AccessArgs),
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

    /// The audit trail: one JSON line (schema `dbgrant.io/audit/v1`) per
    /// write to a database or ARM, appended to this file, or `-` for
    /// standard output.
    #[arg(long, env = "DBGRANT_AUDIT_LOG", default_value = "-", value_name = "PATH")]
    pub audit_log: PathBuf,

    /// Also list each reconcile's backend writes in one `AccessChanged`
    /// Event on its object. One more apiserver write per binding applied;
    /// turn off for very large bulk applies (the audit log still has every
    /// write).
    #[arg(long, env = "DBGRANT_AUDIT_EVENTS", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub audit_events: bool,

    /// Full resync interval: drift detection and status refresh.
    #[arg(long, env = "DBGRANT_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,
}

/// Output of `dbgrant plan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlanOutput {
    /// For people; coloured on a terminal.
    Text,
    /// For machines: the documented `dbgrant.io/plan/v1` shape.
    Json,
    /// For pull-request comments.
    Markdown,
}

/// When to colour text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set.
    Auto,
    Always,
    Never,
}

/// Options for `dbgrant plan`.
#[derive(Clone, Debug, Args)]
pub struct PlanArgs {
    /// Manifests: files, directories (read recursively) or `-` for
    /// standard input, each multi-document YAML. Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub filename: Vec<PathBuf>,

    /// Start from this cluster's dbgrant objects: the manifests replace the
    /// objects with the same kind, namespace and name. Without it the plan
    /// starts from an empty cluster.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Start from these manifests instead of a cluster (the base branch of
    /// a pull request, say): files, directories or `-`, as for `-f`.
    #[arg(long, value_name = "PATH", num_args = 1.., conflicts_with = "kubeconfig")]
    pub before: Option<Vec<PathBuf>>,

    /// Also read each target's live state (with its Secrets, as the
    /// operator does; needs that read access) and show what the operator
    /// would write now: the change, drift it would correct, objects it
    /// would collect, and foreign objects in its way. Writes nothing.
    #[arg(long)]
    pub backend: bool,

    /// The operator's namespace, where the targets' Secrets are (with
    /// `--backend`).
    #[arg(long, env = "DBGRANT_NAMESPACE", default_value = "dbgrant-system")]
    pub operator_namespace: String,

    /// The manifests are the whole desired set (a GitOps sync with
    /// pruning): objects of the cluster or `--before` they lack are
    /// deleted. Without it they are applied on top, as `kubectl apply`.
    #[arg(long)]
    pub prune: bool,

    /// Namespace of namespaced manifests that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: PlanOutput,

    /// Colour the text output.
    #[arg(long, value_enum, default_value = "auto")]
    pub color: ColorChoice,
}

/// Output of `dbgrant access`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccessOutput {
    /// Aligned columns.
    Table,
    /// An array of rows (`targetKind`, `target`, `subjectKind`, `subject`,
    /// `object`, `grants`, `bindings`, `expires`).
    Json,
    /// RFC 4180, with a header row.
    Csv,
}

/// Options for `dbgrant access`.
#[derive(Clone, Debug, Args)]
pub struct AccessArgs {
    /// Kubeconfig file; defaults to in-cluster configuration, then
    /// `$KUBECONFIG` / `~/.kube/config`.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Read the objects from these manifests instead of the cluster.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub filename: Vec<PathBuf>,

    /// Namespace of namespaced manifests that name none (with `-f`).
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,

    /// Only this MongoTarget or CosmosTarget.
    #[arg(long)]
    pub target: Option<String>,

    /// Join with each target's live state (read with its Secrets, as the
    /// operator does): flag drifted access, and list what the server holds
    /// that no binding grants. Writes nothing.
    #[arg(long)]
    pub backend: bool,

    /// The operator's namespace, where the targets' Secrets are (with
    /// `--backend`).
    #[arg(long, env = "DBGRANT_NAMESPACE", default_value = "dbgrant-system")]
    pub operator_namespace: String,

    /// Only this subject (object id or app role value).
    #[arg(long)]
    pub subject: Option<String>,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: AccessOutput,
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
