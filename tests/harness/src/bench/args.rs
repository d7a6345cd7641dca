//! Command-line options of `dbgrant-bench`.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};

use crate::paths;

/// The scenarios, in the order they run at each binding count. `bulk` always
/// runs: it is how the bindings the other scenarios need come to exist.
pub const SCENARIOS: [&str; 7] = ["baseline", "floor", "bulk", "footprint", "single", "restart", "steady"];

/// The backends a run can measure (see [`super::backend::Backend`]).
pub const BACKENDS: [&str; 2] = ["mongodb", "cosmosdb"];

/// Everything `dbgrant-bench` can be told.
#[derive(Clone, Debug)]
pub struct Args {
    /// Binding counts, one full run each (fresh control plane, doubles and
    /// operator per count).
    pub bindings: Vec<usize>,
    /// MongoDB targets (one MongoDB double each).
    pub targets: usize,
    /// Bindings per Entra group: 5 means 10,000 bindings name 2,000 groups.
    pub bindings_per_group: usize,
    /// Bindings per namespace (one namespace per team).
    pub bindings_per_namespace: usize,
    /// Time every MongoDB command takes on the double.
    pub mongo_latency: Duration,
    /// Cosmos DB accounts (CosmosTargets), all behind one ARM double.
    pub cosmos_accounts: usize,
    /// Time every ARM call takes on the double.
    pub arm_latency: Duration,
    /// Where the JSON and markdown reports go.
    pub out: PathBuf,
    /// Which scenarios to report (see [`SCENARIOS`]).
    pub scenarios: Vec<String>,
    /// Which backends to measure (see [`BACKENDS`]).
    pub backends: Vec<String>,
    /// The `dbgrant` binary.
    pub dbgrant: PathBuf,
    /// Applies in flight during the bulk scenario.
    pub parallel: usize,
    /// Creates, updates and deletes measured one at a time (MongoDB).
    pub single: usize,
    /// The same for Cosmos DB, whose changes take seconds each.
    pub single_cosmos: usize,
    /// The operator's resync interval for the restart and steady-state
    /// scenarios (the other scenarios run with the default, 5m).
    pub resync: Duration,
    /// How long the bulk scenario may take before it gives up.
    pub timeout: Duration,
    /// Whether the bulk scenario observes Ready by LISTing namespaces
    /// (instead of one watch).
    pub observe_by_list: bool,
    /// Whether the control plane serves MutatingAdmissionPolicy and the
    /// chart's finalizer policy is installed (after the baseline).
    pub finalizer_policy: bool,
    /// How often the bulk scenario LISTs the namespaces still in progress.
    pub poll: Duration,
    /// Extra arguments to `dbgrant run` (e.g. `--concurrency=64`).
    pub operator_args: Vec<String>,
    /// Extra environment for the operator (`KEY=VALUE`).
    pub operator_env: Vec<(String, String)>,
    /// Extra kube-apiserver flags (e.g. `--profiling=true` to take CPU
    /// profiles of the control plane during a run).
    pub apiserver_args: Vec<String>,
    /// Whether the control plane's CPU is profiled during the baseline and
    /// bulk scenarios (profiles in `out`, their summaries in the report).
    pub profile_control_plane: bool,
    /// The command line, as given (for the report).
    pub command: String,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            bindings: vec![1000, 10000],
            targets: 5,
            bindings_per_group: 5,
            bindings_per_namespace: 100,
            mongo_latency: Duration::from_millis(2),
            cosmos_accounts: 5,
            arm_latency: Duration::from_millis(50),
            out: paths::repo_root().join("target/bench"),
            scenarios: SCENARIOS.iter().map(|s| s.to_string()).collect(),
            backends: BACKENDS.iter().map(|s| s.to_string()).collect(),
            dbgrant: paths::repo_root().join("target/release/dbgrant"),
            parallel: 32,
            single: 50,
            single_cosmos: 20,
            resync: Duration::from_secs(20),
            timeout: Duration::from_secs(1800),
            operator_args: Vec::new(),
            operator_env: Vec::new(),
            apiserver_args: Vec::new(),
            profile_control_plane: false,
            observe_by_list: false,
            finalizer_policy: false,
            poll: Duration::from_millis(500),
            command: String::new(),
        }
    }
}

const USAGE: &str = "\
Usage: dbgrant-bench [OPTIONS]

Measures dbgrant against a real local control plane (etcd + kube-apiserver),
the operator binary as a separate process (the chart's non-admin identity)
and the MongoDB and ARM (Cosmos DB) test doubles, and writes a JSON report
and a markdown table. Run it through deploy/bench.sh, which builds everything.

Options:
  --bindings LIST          binding counts, one full run each [default: 1000,10000]
  --targets N              MongoDB targets, one double each [default: 5]
  --bindings-per-group N   bindings naming each Entra group [default: 5]
  --bindings-per-namespace N  bindings per team namespace [default: 100]
  --mongo-latency-ms MS    time every MongoDB command takes [default: 2]
  --cosmos-accounts N      Cosmos DB accounts (CosmosTargets) [default: 5]
  --arm-latency-ms MS      time every ARM call takes [default: 50]
  --out DIR                report directory [default: target/bench]
  --scenarios LIST         baseline,floor,bulk,footprint,single,restart,steady
                           [default: all] (bulk always runs: it creates the
                           bindings; floor is the operator's apiserver writes
                           made by the benchmark itself, compared to baseline)
  --backends LIST          mongodb,cosmosdb [default: both]
  --dbgrant PATH           operator binary [default: target/release/dbgrant]
  --parallel N             applies in flight during bulk [default: 32]
  --single N               MongoDB creates, updates, deletes measured [default: 50]
  --single-cosmos N        Cosmos DB creates, updates, deletes measured [default: 20]
  --resync-secs S          resync interval for restart/steady [default: 20]
  --timeout-secs S         give up on bulk after this long [default: 1800]
  --finalizer-policy       serve MutatingAdmissionPolicy and install the chart's
                           finalizer policy after the baseline (one operator
                           write less per new binding)
  --bulk-observe HOW       bulk: `watch` (one watch of the kind) or `list` (LIST the
                           unfinished namespaces every --poll-ms) [default: watch]
  --poll-ms MS             bulk with `list`: how often [default: 500]
  --operator-arg ARG       extra argument to `dbgrant run`, repeatable
                           (e.g. --operator-arg=--concurrency=64)
  --operator-env KEY=VALUE extra environment for the operator, repeatable
  --apiserver-arg ARG      extra kube-apiserver flag, repeatable
                           (e.g. --apiserver-arg=--v=2)
  --profile-control-plane  take Go CPU profiles of the control plane (apiserver
                           and etcd) during baseline and bulk: OUT/controlplane-
                           BACKEND-N-PHASE.pprof, summarised in the report
  --render REPORT.json     print the markdown of an earlier report and exit
";

fn list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            let x = x.trim().replace('_', "");
            x.parse::<T>().map_err(|e| anyhow::anyhow!("{what}: {x:?}: {e}"))
        })
        .collect()
}

/// Parse `std::env::args()`.
pub fn parse() -> Result<Args> {
    parse_from(std::env::args().skip(1))
}

/// Parse an argument list (without the program name).
pub fn parse_from(argv: impl IntoIterator<Item = String>) -> Result<Args> {
    let argv: Vec<String> = argv.into_iter().collect();
    // deploy/bench.sh says how it was called, for the report.
    let command = std::env::var("DBGRANT_BENCH_COMMAND")
        .unwrap_or_else(|_| format!("dbgrant-bench {}", argv.join(" ")).trim().to_string());
    let mut a = Args { command, ..Args::default() };
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (flag, None),
        };
        if flag == "-h" || flag == "--help" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        let mut value = || -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().with_context(|| format!("{flag} needs a value (see --help)")),
            }
        };
        match flag.as_str() {
            "--bindings" => a.bindings = list(&value()?, "--bindings")?,
            "--targets" => a.targets = value()?.parse().context("--targets")?,
            "--bindings-per-group" => a.bindings_per_group = value()?.parse().context("--bindings-per-group")?,
            "--bindings-per-namespace" => {
                a.bindings_per_namespace = value()?.parse().context("--bindings-per-namespace")?
            }
            "--mongo-latency-ms" => {
                a.mongo_latency = Duration::from_secs_f64(value()?.parse::<f64>().context("--mongo-latency-ms")? / 1e3)
            }
            "--cosmos-accounts" => a.cosmos_accounts = value()?.parse().context("--cosmos-accounts")?,
            "--arm-latency-ms" => {
                a.arm_latency = Duration::from_secs_f64(value()?.parse::<f64>().context("--arm-latency-ms")? / 1e3)
            }
            "--out" => a.out = value()?.into(),
            "--scenarios" => a.scenarios = list(&value()?, "--scenarios")?,
            "--backends" => a.backends = list(&value()?, "--backends")?,
            "--dbgrant" => a.dbgrant = value()?.into(),
            "--parallel" => a.parallel = value()?.parse().context("--parallel")?,
            "--single" => a.single = value()?.parse().context("--single")?,
            "--single-cosmos" => a.single_cosmos = value()?.parse().context("--single-cosmos")?,
            "--resync-secs" => a.resync = Duration::from_secs(value()?.parse().context("--resync-secs")?),
            "--finalizer-policy" => a.finalizer_policy = true,
            "--bulk-observe" => {
                a.observe_by_list = match value()?.as_str() {
                    "watch" => false,
                    "list" => true,
                    other => bail!("--bulk-observe {other:?}: want watch or list"),
                }
            }
            "--poll-ms" => a.poll = Duration::from_millis(value()?.parse().context("--poll-ms")?),
            "--operator-arg" => a.operator_args.push(value()?),
            "--apiserver-arg" => a.apiserver_args.push(value()?),
            "--profile-control-plane" => a.profile_control_plane = true,
            "--operator-env" => {
                let kv = value()?;
                let (k, v) = kv.split_once('=').with_context(|| format!("--operator-env {kv:?}: want KEY=VALUE"))?;
                a.operator_env.push((k.to_string(), v.to_string()));
            }
            "--timeout-secs" => a.timeout = Duration::from_secs(value()?.parse().context("--timeout-secs")?),
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    for s in &a.scenarios {
        if !SCENARIOS.contains(&s.as_str()) {
            bail!("unknown scenario {s:?}; known: {}", SCENARIOS.join(","));
        }
    }
    for b in &mut a.backends {
        *b = match b.as_str() {
            "mongodb" | "mongo" => "mongodb".into(),
            "cosmosdb" | "cosmos" => "cosmosdb".into(),
            other => bail!("unknown backend {other:?}; known: {}", BACKENDS.join(",")),
        };
    }
    if a.bindings.is_empty() || a.bindings.contains(&0) {
        bail!("--bindings needs one or more positive counts");
    }
    if a.targets == 0
        || a.cosmos_accounts == 0
        || a.bindings_per_group == 0
        || a.bindings_per_namespace == 0
        || a.parallel == 0
    {
        bail!("--targets, --bindings-per-group, --bindings-per-namespace and --parallel must be positive");
    }
    if a.resync < Duration::from_secs(5) {
        bail!("--resync-secs must be at least 5 (lastResyncTime has one-second precision)");
    }
    let out = a.out.clone();
    a.out = if out.is_absolute() { out } else { std::env::current_dir()?.join(out) };
    Ok(a)
}

impl Args {
    /// Whether `scenario` is to be reported.
    pub fn wants(&self, scenario: &str) -> bool {
        scenario == "bulk" || self.scenarios.iter().any(|s| s == scenario)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_defaults() {
        let a = parse_from(
            ["--bindings", "1_000,10000", "--targets=3", "--mongo-latency-ms", "0.5", "--scenarios", "single"]
                .map(String::from),
        )
        .unwrap();
        assert_eq!(a.bindings, [1000, 10000]);
        assert_eq!(a.targets, 3);
        assert_eq!(a.mongo_latency, Duration::from_micros(500));
        assert!(a.wants("bulk") && a.wants("single") && !a.wants("steady"));
        assert!(parse_from(["--scenarios", "nope"].map(String::from)).is_err());
        assert_eq!(parse_from(["--backends", "cosmos"].map(String::from)).unwrap().backends, ["cosmosdb"]);
        assert!(parse_from(["--backends", "oracle"].map(String::from)).is_err());
    }
}
