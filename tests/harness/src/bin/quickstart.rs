//! The quickstart: a real local control plane, the backend doubles (the
//! MongoDB wire-protocol double, and the ARM + Entra HTTPS double serving
//! the Cosmos examples' tenant and account), the operator, `deploy/examples/`
//! applied, and what was granted printed.
//!
//! Run through `deploy/quickstart.sh`, which builds everything first.
//! Ctrl-C stops the operator, the doubles and the control plane.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use dbgrant_doubles::mongo::MongoDouble;
use dbgrant_harness::{
    Cluster, Operator,
    cluster::condition,
    controlplane::ControlPlane,
    examples::{self, CosmosDouble},
    manifests,
    operator::Options,
    paths,
};
use serde_json::Value;

const MONGO_USER: (&str, &str) = ("dbgrant-operator", "quickstart-only-password");

struct Args {
    dbgrant: PathBuf,
    wait: Duration,
    exit: bool,
}

fn args() -> Result<Args> {
    let mut out =
        Args { dbgrant: paths::repo_root().join("target/debug/dbgrant"), wait: Duration::from_secs(90), exit: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dbgrant" => out.dbgrant = it.next().context("--dbgrant needs a path")?.into(),
            "--wait" => out.wait = Duration::from_secs(it.next().context("--wait needs seconds")?.parse()?),
            "--exit" => out.exit = true,
            "-h" | "--help" => {
                println!(
                    "Usage: dbgrant-quickstart [--dbgrant PATH] [--wait SECONDS] [--exit]\n\n\
                     Starts a local control plane, the MongoDB and ARM/Entra test doubles and\n\
                     the operator (workload identity against the ARM/Entra double),\n\
                     applies deploy/examples/, waits for Ready and prints what was granted.\n\
                     Keeps running until Ctrl-C unless --exit is given."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(out)
}

fn step(msg: &str) {
    println!("\n==> {msg}");
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let started = Instant::now();
    step("starting the local control plane (etcd + kube-apiserver + kube-controller-manager)");
    let cp = tokio::task::spawn_blocking(ControlPlane::start).await??;
    let cluster = Cluster::connect(&cp.info).await?;
    step("installing the CRDs and the Helm chart's RBAC");
    cluster.install().await?;

    step("starting the MongoDB test double");
    let mongo = MongoDouble::start_with_admin(MONGO_USER.0, MONGO_USER.1).await?;
    println!("    MongoDB double at {}", mongo.uri());

    step("starting the Azure Resource Manager + Microsoft Entra ID test double (HTTPS)");
    let cosmos = CosmosDouble::start(&cluster.operator_user).await?;
    let ex = &cosmos.examples;
    println!("    ARM and Entra authority at {} (tenant {})", cosmos.double.arm_endpoint(), ex.tenant_id);
    println!("    Cosmos DB account {}", ex.account);
    println!(
        "    workload identity: client id {} federated with {}; token file {}",
        ex.client_id,
        cluster.operator_user,
        cosmos.token_file.display()
    );
    let ca = cosmos.ca_secret(&cluster.operator_namespace);
    cluster.apply(&cluster.admin, &ca, None).await?;
    println!("    Secret {}/{} holds the double's CA", cluster.operator_namespace, examples::ARM_CA_SECRET);

    step("starting the operator as the chart's ServiceAccount");
    let mut options = Options::new(&args.dbgrant, "quickstart");
    options.resync = Duration::from_secs(60);
    options.env = cosmos.operator_env();
    let mut op = Operator::start(&cluster, options).await?;
    println!(
        "    authenticated with a bound ServiceAccount token from the TokenRequest API, kept fresh in {}",
        cp.info.operator_token_file.display()
    );
    println!("    operator metrics at http://{}/metrics, log at {}", op.addr, op.log.display());

    step("applying deploy/examples/");
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(paths::repo_root().join("deploy/examples"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    // Targets and definitions before the bindings that use them.
    files.sort_by_key(|p| (p.to_string_lossy().contains("rolebindings"), p.clone()));
    for f in &files {
        let mut file_docs = manifests::load(f)?;
        examples::point_mongo_examples(&mut file_docs, &mongo, MONGO_USER.0, MONGO_USER.1);
        cosmos.point_examples(&mut file_docs);
        for d in &file_docs {
            cluster.apply(&cluster.admin, d, None).await?;
            println!("    {} {}", manifests::kind(d), display_name(d));
        }
        docs.extend(file_docs);
    }

    step(&format!("waiting up to {}s for Ready", args.wait.as_secs()));
    let watched: Vec<&Value> =
        docs.iter().filter(|d| d["apiVersion"].as_str() == Some("dbgrant.io/v1alpha1")).collect();
    let deadline = Instant::now() + args.wait;
    let mut shown = None;
    let rows = loop {
        let rows = statuses(&cluster, &watched).await?;
        let ready = rows.iter().filter(|r| r.2 == "True").count();
        if shown != Some(ready) {
            println!("    {ready}/{} Ready after {:.0}s", rows.len(), started.elapsed().as_secs_f64());
            shown = Some(ready);
        }
        // Settled: everything Ready, or everything has a verdict and the
        // time is up.
        if ready == rows.len() || Instant::now() >= deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    step("dbgrant objects");
    println!("    {:<22} {:<44} {:<7} {:<16} MESSAGE", "KIND", "NAME", "READY", "REASON");
    for (kind, name, ready, reason, message) in &rows {
        println!("    {kind:<22} {name:<44} {ready:<7} {reason:<16} {message}");
    }

    step("MongoDB roles on the double (what members of each Entra group get)");
    let mut roles = mongo.roles();
    roles.sort_by(|a, b| a.name.role.cmp(&b.name.role));
    if roles.is_empty() {
        println!("    (none)");
    }
    for r in roles {
        let inherits: Vec<String> = r.roles.iter().map(|x| format!("{}@{}", x.role, x.db)).collect();
        println!("    {}.{}  roles: [{}]", r.name.db, r.name.role, inherits.join(", "));
        for p in &r.privileges {
            println!("        privilege {}: {}", p.resource.to_document(), p.actions.join(", "));
        }
    }
    let counters = mongo.counters();
    println!("    MongoDB commands seen: {counters:?}");

    step(&format!("Cosmos DB SQL role definitions and assignments on the ARM double ({})", ex.account.name));
    let definitions = cosmos.custom_definitions(&ex.account);
    if definitions.is_empty() {
        println!("    custom role definitions: (none)");
    }
    for d in &definitions {
        println!(
            "    role definition {} \"{}\"  assignable at: {}",
            d.name,
            d.role_name,
            d.assignable_scopes.join(", ")
        );
        for a in &d.data_actions {
            println!("        dataAction {a}");
        }
    }
    let grants = cosmos.grants(&ex.account);
    if grants.is_empty() {
        println!("    role assignments: (none)");
    } else {
        println!("    {:<36} {:<18} {:<36} SCOPE", "PRINCIPAL", "NAME", "ROLE DEFINITION");
    }
    for g in &grants {
        println!(
            "    {:<36} {:<18} {:<36} {}",
            g.principal_id,
            g.principal_name.as_deref().unwrap_or("-"),
            g.role_name,
            g.scope
        );
    }
    let counters = cosmos.double.account_counters(&ex.account);
    println!(
        "    ARM requests seen: {} reads, {} writes, {} operation polls; Entra token requests: {}",
        counters.reads,
        counters.writes,
        counters.polls,
        cosmos.double.counters().token_requests
    );

    println!(
        "\n    control plane: {}  (admin kubeconfig: {})\n    took {:.0}s",
        cluster.server,
        cluster.admin_kubeconfig.display(),
        started.elapsed().as_secs_f64()
    );
    if !args.exit {
        println!("\n    Try: KUBECONFIG={} kubectl get dbgrant -A", cluster.admin_kubeconfig.display());
        println!("    Press Ctrl-C to stop everything.");
        tokio::signal::ctrl_c().await?;
        println!();
    }
    step("stopping the operator, the doubles and the control plane");
    op.stop(Duration::from_secs(10)).await?;
    drop(mongo);
    cosmos.double.shutdown().await;
    tokio::task::spawn_blocking(move || cp.stop()).await??;
    Ok(())
}

fn display_name(d: &Value) -> String {
    match d["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", manifests::name(d)),
        None => manifests::name(d).to_string(),
    }
}

type Row = (String, String, String, String, String);

async fn statuses(cluster: &Cluster, docs: &[&Value]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for d in docs {
        let o = cluster.get(&cluster.admin, d, None).await?;
        let c = o.as_ref().and_then(|o| condition(o, "Ready"));
        let field = |k: &str| c.and_then(|c| c[k].as_str()).unwrap_or("-").to_string();
        rows.push((
            manifests::kind(d).to_string(),
            display_name(d),
            field("status"),
            field("reason"),
            field("message"),
        ));
    }
    Ok(rows)
}
