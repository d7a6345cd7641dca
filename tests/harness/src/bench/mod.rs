//! `dbgrant-bench`: latency, throughput, backend cost and footprint of the
//! operator at thousands of bindings, against real components.
//!
//! Per binding count: a fresh local control plane (etcd + kube-apiserver),
//! one backend double per target, and the release `dbgrant` binary as a
//! separate process with the chart's non-admin identity. Then, in order:
//!
//! 0. baseline: the same applies with no operator running (then deleted):
//!    the apiserver's own cost of storing the bindings; then the floor: the
//!    same applies each followed by the operator's apiserver writes, made
//!    by the benchmark itself (see [`floor`]);
//! 1. footprint at idle with no bindings (10 s);
//! 2. **bulk**: apply every binding at once ([`Args::parallel`] in flight),
//!    time until a LIST of each namespace shows all Ready;
//! 3. footprint at idle with every binding Ready (10 s);
//! 4. **single change**: create, update, delete one binding at a time
//!    (watched);
//! 5. **restart**: stop the operator, start it again with a short resync;
//!    time until it has re-established every binding;
//! 6. **steady state**: backend reads and writes over two resync intervals.
//!
//! See [`scenarios`] for exact definitions and [`backend`] for adding
//! Cosmos DB.

pub mod apiserver;
pub mod args;
pub mod backend;
pub mod cosmos;
pub mod floor;
pub mod machine;
pub mod mongo;
pub mod process;
pub mod profile;
pub mod report;
pub mod scenarios;
pub mod stages;
pub mod stats;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use self::{
    args::Args,
    backend::{Backend, Layout},
    cosmos::CosmosBackend,
    machine::Machine,
    mongo::MongoBackend,
    scenarios::Env,
};
use crate::{
    Cluster, Operator,
    cluster::API_VERSION,
    controlplane::{self, ControlPlane, MUTATING_ADMISSION_POLICY},
    operator::Options,
};

/// Run every backend at every binding count; write the reports after each
/// run (so a late failure keeps the earlier results). Returns the report.
pub async fn run(args: Args) -> Result<Value> {
    if !args.dbgrant.exists() {
        bail!(
            "{} does not exist; build it with `cargo build --release --locked --bin dbgrant` (deploy/bench.sh does)",
            args.dbgrant.display()
        );
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let machine = Machine::detect();
    eprintln!(
        "bench: {} cores, {:.1} GiB, commit {}; reports in {}",
        machine.cores,
        machine.memory_bytes as f64 / (1u64 << 30) as f64,
        machine.commit,
        args.out.display()
    );
    let mut runs = Vec::new();
    for backend in &args.backends {
        for &n in &args.bindings {
            let result = match backend.as_str() {
                "mongodb" | "mongo" => run_size(&args, MongoBackend::new(args.mongo_latency), args.targets, n).await,
                "cosmosdb" | "cosmos" => {
                    run_size(&args, CosmosBackend::new(args.arm_latency), args.cosmos_accounts, n).await
                }
                other => bail!("backend {other} is not implemented"),
            };
            runs.push(result.unwrap_or_else(|e| {
                eprintln!("bench: {backend} × {n} failed: {e:#}");
                json!({"backend": backend, "bindings": n, "error": format!("{e:#}")})
            }));
            let report = report::assemble(&args, &machine, &runs);
            report::write(&args.out, &report)?;
        }
    }
    Ok(report::assemble(&args, &machine, &runs))
}

fn options(args: &Args, label: &str, resync: Duration, env: Vec<(String, String)>) -> Options {
    let mut o = Options::new(&args.dbgrant, label);
    o.resync = resync;
    // The operator's own default filter: what production runs with.
    o.env.push(("RUST_LOG".into(), "info,kube=warn,mongodb=warn".into()));
    // No backtraces for errors, as in the image, whatever this shell has:
    // with RUST_BACKTRACE=1 every error a library builds and drops (the
    // Azure SDK's absent-header lookups) unwinds the stack, which cost the
    // operator 30 % more CPU in the Cosmos DB bulk (docs/benchmarks.md).
    o.env.push(("RUST_BACKTRACE".into(), "0".into()));
    o.env.push(("RUST_LIB_BACKTRACE".into(), "0".into()));
    o.env.extend(env);
    o.args.extend(args.operator_args.iter().cloned());
    o.env.extend(args.operator_env.iter().cloned());
    o
}

async fn run_size<B: Backend>(args: &Args, backend: B, targets: usize, n: usize) -> Result<Value> {
    eprintln!("\nbench: ===== {} × {n} bindings, {targets} targets =====", backend.name());
    let mut apiserver_args: Vec<String> = Vec::new();
    if args.finalizer_policy {
        apiserver_args.extend(MUTATING_ADMISSION_POLICY.iter().map(|a| a.to_string()));
    }
    apiserver_args.extend(args.apiserver_args.iter().cloned());
    let cp = tokio::task::spawn_blocking(move || {
        ControlPlane::start_with_options(controlplane::Options { apiserver_args, ..Default::default() })
    })
    .await??;
    let result = measure(args, backend, targets, n, &cp).await;
    tokio::task::spawn_blocking(move || cp.stop()).await??;
    result
}

async fn measure<B: Backend>(
    args: &Args,
    mut backend: B,
    targets: usize,
    n: usize,
    cp: &ControlPlane,
) -> Result<Value> {
    let cluster = Cluster::connect(&cp.info).await?;
    cluster.install().await?;
    let layout = Layout::new(n, targets, args.bindings_per_group, args.bindings_per_namespace, backend.shared_grants());
    let docs = backend.start(&cluster, &layout).await?;
    let env_vars = backend.operator_env();
    for ns in layout.namespaces() {
        cluster.ensure_namespace(&ns).await?;
    }
    // The controller-manager's writes for new namespaces would otherwise
    // count as the operator's in the first scenario.
    for ns in layout.namespaces() {
        cluster.wait_namespace_set_up(&ns).await?;
    }
    let kind = |k: &str| json!({"apiVersion": API_VERSION, "kind": k});
    let (binding_ar, _) = cluster.resource(&cluster.admin, &kind(backend.binding_kind())).await?;
    let (target_ar, _) = cluster.resource(&cluster.admin, &kind(backend.target_kind())).await?;
    let name = backend.name();
    let control_plane_pid = process::child_named("controlplane");
    let env = Env {
        args,
        cluster: cluster.clone(),
        backend,
        layout: layout.clone(),
        binding_ar,
        target_ar,
        control_plane_pid,
    };

    let profile = |phase: &str| -> Result<Option<profile::Profile<'_>>> {
        if !args.profile_control_plane {
            return Ok(None);
        }
        std::fs::create_dir_all(&args.out)?;
        profile::Profile::start(cp, args.out.join(format!("controlplane-{}-{n}-{phase}.pprof", env.backend.name())))
            .map(Some)
    };
    let baseline =
        if args.wants("baseline") { Some(scenarios::baseline(&env, profile("baseline")?).await?) } else { None };
    let mut floors = Vec::new();
    if args.wants("floor") {
        for writes in [floor::Writes::Status, floor::Writes::All] {
            floors.push(floor::floor(&env, writes).await?);
        }
    }
    if args.finalizer_policy {
        let probe = env.backend.binding(&env.layout.binding(0));
        env.cluster.install_finalizer_policy(&probe, "dbgrant.io/revoke").await?;
    }
    let mut op = Operator::start(
        &cluster,
        options(args, &format!("bench-{name}-{n}"), Duration::from_secs(300), env_vars.clone()),
    )
    .await?;
    let mut logs = vec![op.log.display().to_string()];
    cluster.apply_all(&cluster.admin, &docs, None).await?;
    env.wait_targets_ready(Duration::from_secs(60)).await?;
    let mut out = json!({
        "backend": name,
        "bindings": n,
        "targets": layout.targets,
        "sharedGrants": layout.shared,
        "groups": layout.groups,
        "namespaces": layout.namespaces().len(),
        "bindingsPerGroup": args.bindings_per_group,
        "finalizerPolicy": args.finalizer_policy,
    });
    if let Some(b) = baseline {
        out["baseline"] = b;
    }
    if !floors.is_empty() {
        out["floor"] = json!(floors);
    }
    let mut footprint = Vec::new();
    if args.wants("footprint") {
        eprintln!("bench: footprint: idle with no bindings");
        footprint.push(scenarios::footprint_row("idle, no bindings", &scenarios::idle(&op).await?));
    }

    let p = profile("bulk")?;
    let (mut bulk, complete) = scenarios::bulk(&env, &op).await?;
    if let Some(p) = p {
        bulk["controlPlaneProfile"] = p.finish()?;
    }
    footprint.push(json!({
        "phase": "bulk",
        "rssMiB": bulk["operator"]["rssMiB"], "peakRssMiB": bulk["operator"]["peakRssMiB"],
        "hwmMiB": bulk["operator"]["hwmMiB"], "cpuSeconds": bulk["operator"]["cpuSeconds"],
        "wallSeconds": bulk["operator"]["wallSeconds"],
    }));
    out["bulk"] = bulk;
    if !complete {
        out["error"] = json!("bulk did not complete; later scenarios skipped");
        out["footprint"] = json!(footprint);
        op.stop(Duration::from_secs(30)).await?;
        return Ok(out);
    }
    if args.wants("footprint") {
        eprintln!("bench: footprint: idle with {n} bindings Ready");
        footprint.push(scenarios::footprint_row(&format!("idle, {n} bindings"), &scenarios::idle(&op).await?));
    }
    if args.wants("single") {
        let count = if env.backend.name() == "cosmosdb" { args.single_cosmos } else { args.single };
        out["single"] = scenarios::single(&env, &op, count).await?;
    }
    if args.wants("restart") || args.wants("steady") {
        let opts = options(args, &format!("bench-{name}-{n}-restarted"), args.resync, env_vars.clone());
        let p = if args.wants("restart") { profile("restart")? } else { None };
        let (restart, new) = scenarios::restart(&env, &mut op, opts, p).await?;
        op = new;
        logs.push(op.log.display().to_string());
        if args.wants("restart") {
            out["restart"] = restart;
        }
    }
    if args.wants("steady") {
        out["steady"] = scenarios::steady(&env, &op).await?;
    }
    if let Some(r) = op.pid().and_then(process::read) {
        footprint.push(json!({"phase": "end", "rssMiB": process::mib(r.rss), "hwmMiB": process::mib(r.hwm)}));
    }
    out["footprint"] = json!(footprint);
    let log: String = logs.iter().map(|l| std::fs::read_to_string(l).unwrap_or_default()).collect();
    out["operatorLog"] = json!({
        "files": logs,
        "forbidden": log.matches("orbidden").count(),
        "warnings": log.lines().filter(|l| l.contains(" WARN ")).count(),
        "errors": log.lines().filter(|l| l.contains(" ERROR ")).count(),
    });
    out["stoppedCleanly"] = json!(op.stop(Duration::from_secs(30)).await?);
    Ok(out)
}
