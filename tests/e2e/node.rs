//! The Helm chart installed for real, on a node: the control plane runs a
//! kubelet and kube-scheduler with Debian's containerd and runc, the
//! operator image is packaged here from the static release binary
//! (`deploy/build-binary.sh`, no registry), and `helm install` deploys it
//! with two replicas. The pods authenticate with the ServiceAccount tokens
//! the kubelet projects, reach the apiserver through the `kubernetes`
//! Service, and reach the MongoDB and ARM doubles on the host's address on
//! the pod bridge; nothing leaves the machine.
//!
//! It shows: the Deployment becomes Available with both pods Ready (their
//! probes pass) and one Lease holder; the quickstart examples turn Ready
//! through the in-cluster operator, MongoDB's and Cosmos DB's, the latter
//! with the ServiceAccount token the kubelet projects for Entra's audience
//! (the ARM + Entra double verifies it with the keys the apiserver
//! publishes); a rollout replaces the leader while bindings keep changing,
//! and no change is applied twice; a deleted binding is revoked by the new
//! leader.
//!
//! Needs root, `containerd`, `runc` and the CNI plugins (Debian:
//! `apt-get install containerd runc containernetworking-plugins iptables
//! iproute2`; `tests/ci.sh` installs them). When they are missing the test
//! fails and says what is missing; `DBGRANT_E2E_NODE=skip` skips it
//! explicitly, for machines that cannot run containers.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use dbgrant_doubles::{
    arm::FEDERATED_TOKEN_AUDIENCE,
    mongo::{MongoDouble, MongoDoubleConfig, ScramUser},
};
use dbgrant_harness::{
    Cluster, DumpOnFailure, chart,
    controlplane::{self, ControlPlane, NodeInfo, NodeOptions},
    examples::{self, CosmosDouble, CosmosDoubleOptions},
    manifests, paths,
};
use k8s_openapi::api::{apps::v1::Deployment, coordination::v1::Lease, core::v1::Pod};
use kube::{Api, api::ListParams};

use crate::common::{MONGO_ADMIN, SETTLE, in_ns, mongo_binding, operator_lock};
use crate::faults_common::summary;
use crate::faults_mongo_model::{duplicate_creates, repeated_writes};

/// Where the chart is installed (the release namespace the MongoDB
/// examples' Secrets name).
const RELEASE_NS: &str = "dbgrant-system";
/// The image the static binary is packaged as.
const IMAGE: (&str, &str) = ("localhost/dbgrant", "e2e");
/// A leader stopping on purpose releases the Lease once its reconciles
/// are done; the follower must not wait the Lease's duration (15 s) out.
const HANDOVER_LIMIT: Duration = Duration::from_secs(5);
const READERS: &str = "71b72785-7c23-4e2e-9fa7-ad62ce90a22a";
const WRITERS: &str = "cc26f19f-4a57-4faa-9f42-a75454c72497";

/// The operator pods not being deleted, by name: (ready, restarts).
async fn pods(cluster: &Cluster) -> Result<BTreeMap<String, (bool, i32)>> {
    let api: Api<Pod> = Api::namespaced(cluster.admin.clone(), RELEASE_NS);
    let list = api.list(&ListParams::default().labels("app.kubernetes.io/name=dbgrant")).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let status = p.status.unwrap_or_default();
            let ready = status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
            let restarts = status.container_statuses.unwrap_or_default().iter().map(|c| c.restart_count).sum();
            (p.metadata.name.unwrap_or_default(), (ready, restarts))
        })
        .collect())
}

/// The Lease holders in the release namespace (there must be one Lease).
async fn holder(cluster: &Cluster) -> Result<Option<String>> {
    let api: Api<Lease> = Api::namespaced(cluster.admin.clone(), RELEASE_NS);
    let leases = api.list(&ListParams::default()).await?.items;
    if leases.len() != 1 {
        bail!("want one Lease in {RELEASE_NS}, found {}", leases.len());
    }
    Ok(leases[0].spec.as_ref().and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty()))
}

/// The tail of every container log the kubelet kept, for a failure.
fn pod_logs(node: &NodeInfo) -> String {
    let mut out = String::new();
    let Ok(pods) = std::fs::read_dir(node.dir.join("pod-logs")) else {
        return format!("(no pod logs under {})", node.dir.display());
    };
    for pod in pods.flatten() {
        for file in walk(&pod.path()) {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {}\n", file.display()));
            for l in &lines[lines.len().saturating_sub(60)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { files.extend(walk(&p)) } else { files.push(p) }
    }
    files.sort();
    files
}

/// Every container log line, for the checks on the whole run.
fn all_pod_log_text(node: &NodeInfo) -> String {
    walk(&node.dir.join("pod-logs")).iter().map(|f| std::fs::read_to_string(f).unwrap_or_default()).collect()
}

/// `helm <verb> dbgrant charts/dbgrant --namespace dbgrant-system <args>
/// --wait`, on a blocking thread (it waits minutes at most).
fn helm_release(cluster: &Cluster, verb: &str, args: &[&str]) -> tokio::task::JoinHandle<Result<String>> {
    let kubeconfig = cluster.admin_kubeconfig.clone();
    let chart_dir = paths::repo_root().join("charts/dbgrant").display().to_string();
    let mut all: Vec<String> = [verb, "dbgrant", &chart_dir, "--namespace", RELEASE_NS].map(String::from).to_vec();
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(["--wait", "--timeout", "180s"].map(String::from));
    tokio::task::spawn_blocking(move || chart::helm(&kubeconfig, &all.iter().map(String::as_str).collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_on_a_node_elects_one_leader_and_rolls_without_a_double_apply() -> Result<()> {
    let _lock = operator_lock().await;
    if std::env::var("DBGRANT_E2E_NODE").as_deref() == Ok("skip") {
        summary("node: SKIPPED (DBGRANT_E2E_NODE=skip): the chart was not installed on a node in this run");
        return Ok(());
    }
    let binary = paths::static_binary()?;
    let image = format!("{}:{}", IMAGE.0, IMAGE.1);
    let started = Instant::now();
    let cp = tokio::task::spawn_blocking(move || {
        ControlPlane::start_with_options(controlplane::Options {
            // The chart owns dbgrant-system's ServiceAccount; the identity
            // the control plane makes for out-of-cluster operators lives
            // elsewhere.
            operator_namespace: Some("dbgrant-e2e-unused".into()),
            node: Some(NodeOptions { images: vec![(image, binary)] }),
            ..Default::default()
        })
    })
    .await??;
    let node = cp.info.node.clone().context("the control plane started without its node")?;
    let cp_secs = started.elapsed().as_secs_f64();
    let cluster = Cluster::connect(&cp.info).await?;
    let result = scenario(&cluster, &node, cp_secs).await;
    if result.is_err() {
        eprintln!("node: container logs:\n{}", pod_logs(&node));
    }
    result
}

async fn scenario(cluster: &Cluster, node: &NodeInfo, cp_secs: f64) -> Result<()> {
    // The double listens where pods reach the host: its address on the
    // pod bridge (pods have no other route).
    let double = MongoDouble::start(
        MongoDoubleConfig { listen: format!("{}:0", node.host_ip).parse()?, ..Default::default() }
            .user(ScramUser::admin(MONGO_ADMIN.0, MONGO_ADMIN.1)),
    )
    .await?;
    // The ARM + Entra double on the bridge too. It trusts the apiserver as
    // the issuer of the operator's federated tokens, with the keys the
    // apiserver publishes: the pods present the token the kubelet projects,
    // as on AKS, not one the double minted.
    let operator_subject = format!("system:serviceaccount:{RELEASE_NS}:dbgrant");
    let issuer = cluster.service_account_issuer().await?;
    let issuer_name = issuer.0.clone();
    let cosmos = CosmosDouble::start_with(
        &operator_subject,
        CosmosDoubleOptions { listen: Some(format!("{}:0", node.host_ip).parse()?), issuer: Some(issuer) },
    )
    .await?;
    let dump = DumpOnFailure::new(cluster, &[RELEASE_NS, "team-orders", "team-catalog"]);
    // What the Azure Workload Identity webhook injects into a labelled pod:
    // the token file's variable and a projected ServiceAccount token for
    // Entra's audience (tenant and client id come from the CosmosTarget,
    // the authority host from its spec.cloud).
    let values = paths::run_dir("node-values")?.join("values.yaml");
    std::fs::write(
        &values,
        serde_json::to_string(&serde_json::json!({
            "extraEnv": [{"name": "AZURE_FEDERATED_TOKEN_FILE", "value": "/var/run/secrets/azure/tokens/azure-identity-token"}],
            "extraVolumes": [{"name": "azure-identity-token", "projected": {"sources": [{"serviceAccountToken": {
                "path": "azure-identity-token", "audience": FEDERATED_TOKEN_AUDIENCE, "expirationSeconds": 3600}}]}}],
            "extraVolumeMounts": [{"name": "azure-identity-token", "mountPath": "/var/run/secrets/azure/tokens", "readOnly": true}],
        }))?,
    )?;
    let values = values.to_str().context("values path")?.to_string();

    // 1. helm install, two replicas, and wait for the Deployment.
    let t = Instant::now();
    let (repository, tag) = (format!("image.repository={}", IMAGE.0), format!("image.tag={}", IMAGE.1));
    helm_release(
        cluster,
        "install",
        &[
            "--create-namespace",
            "--values",
            &values,
            "--set",
            &repository,
            "--set",
            &tag,
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "replicaCount=2",
        ],
    )
    .await??;
    let install_secs = t.elapsed().as_secs_f64();
    let deployments: Api<Deployment> = Api::namespaced(cluster.admin.clone(), RELEASE_NS);
    let deployment = deployments.get("dbgrant").await?;
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Available" && c.status == "True"));
    assert!(available, "Deployment not Available after helm install --wait: {:?}", deployment.status);
    let before = pods(cluster).await?;
    assert_eq!(before.len(), 2, "two replicas: {before:?}");
    assert!(
        before.values().all(|(ready, restarts)| *ready && *restarts == 0),
        "pods Ready, never restarted: {before:?}"
    );
    // One leader among them (the follower waits, Ready, for the Lease).
    let deadline = Instant::now() + SETTLE;
    let leader = loop {
        if let Some(h) = holder(cluster).await? {
            break h;
        }
        if Instant::now() > deadline {
            bail!("no Lease holder {SETTLE:?} after the install");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(before.contains_key(&leader), "the Lease holder {leader} is not one of the pods {before:?}");

    // 2. The MongoDB quickstart examples, through the in-cluster operator.
    let mut target = manifests::example("mongo-target.yaml")?;
    examples::point_mongo_examples(&mut target, &double, MONGO_ADMIN.0, MONGO_ADMIN.1);
    let bindings = manifests::example("mongo-rolebindings.yaml")?;
    let t = Instant::now();
    cluster.apply_all(&cluster.admin, &target, None).await?;
    cluster.apply_all(&cluster.admin, &bindings, None).await?;
    cluster.wait_condition(&target[2], None, "Ready", "True", Some("Connected"), SETTLE).await?;
    for b in bindings.iter().filter(|d| manifests::kind(d) == "MongoRoleBinding") {
        cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    }
    let examples_secs = t.elapsed().as_secs_f64();
    for (group, role) in [(READERS, "read@orders"), (WRITERS, "readWrite@orders")] {
        let held = double.role(&format!("entra/{group}"), "admin").context("example role on the server")?;
        let roles: Vec<String> = held.roles.iter().map(|r| format!("{}@{}", r.role, r.db)).collect();
        assert_eq!(roles, [role], "role of {group}");
    }

    // The Cosmos DB quickstart examples: the target, the custom role
    // definition and the bindings, through ARM with the projected token.
    let mut cosmos_target = manifests::example("cosmos-target.yaml")?;
    cosmos.point_examples(&mut cosmos_target);
    let definition = manifests::example("cosmos-roledefinition.yaml")?;
    let cosmos_bindings = manifests::example("cosmos-rolebindings.yaml")?;
    let t = Instant::now();
    cluster.apply(&cluster.admin, &cosmos.ca_secret(RELEASE_NS), None).await?;
    cluster.apply_all(&cluster.admin, &cosmos_target, None).await?;
    cluster.apply_all(&cluster.admin, &definition, None).await?;
    cluster.apply_all(&cluster.admin, &cosmos_bindings, None).await?;
    let ct = cosmos_target.iter().find(|d| manifests::kind(d) == "CosmosTarget").context("example CosmosTarget")?;
    cluster.wait_condition(ct, None, "Ready", "True", Some("Connected"), SETTLE).await?;
    cluster.wait_condition(&definition[0], None, "Ready", "True", Some("Applied"), SETTLE).await?;
    let mut status_assignments = 0;
    for b in cosmos_bindings.iter().filter(|d| manifests::kind(d) == "CosmosRoleBinding") {
        let o = cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), SETTLE).await?;
        status_assignments += o.data["status"]["assignments"].as_array().map_or(0, Vec::len);
    }
    let cosmos_secs = t.elapsed().as_secs_f64();
    let grants = cosmos.grants(&cosmos.examples.account);
    assert!(!grants.is_empty(), "no role assignment in the account");
    assert_eq!(grants.len(), status_assignments, "the bindings' status names every assignment: {grants:#?}");
    assert!(
        grants.iter().all(|g| g.principal_name.is_some()),
        "every assignment is for a directory object the examples name"
    );

    // 3. A rollout (a pod annotation changes the template) replaces both
    // pods, the leader among them, while bindings keep arriving.
    let writes_before = double.user_management_log().len();
    let upgrade =
        helm_release(cluster, "upgrade", &["--reuse-values", "--set", "podAnnotations.dbgrant\\.io/rollout=e2e"]);
    // Bindings keep arriving every 1.5 s until the rollout is done and a
    // new pod holds the Lease, and a little after.
    let t = Instant::now();
    let pod_api: Api<Pod> = Api::namespaced(cluster.admin.clone(), RELEASE_NS);
    let mut holders: Vec<(f64, Option<String>)> = vec![(0.0, Some(leader.clone()))];
    // When each pod was first seen terminating.
    let mut stopping: BTreeMap<String, f64> = BTreeMap::new();
    let mut new_leader_at: Option<f64> = None;
    let mut upgrade = Some(upgrade);
    let mut rollout_secs = 0.0;
    let mut added = Vec::new();
    let mut next_change = Instant::now();
    loop {
        let now = t.elapsed().as_secs_f64();
        let h = holder(cluster).await?;
        if holders.last().map(|(_, last)| last) != Some(&h) {
            holders.push((now, h.clone()));
        }
        for p in pod_api.list(&ListParams::default().labels("app.kubernetes.io/name=dbgrant")).await?.items {
            if p.metadata.deletion_timestamp.is_some() {
                stopping.entry(p.metadata.name.unwrap_or_default()).or_insert(now);
            }
        }
        if new_leader_at.is_none() && h.as_ref().is_some_and(|h| !before.contains_key(h)) {
            new_leader_at = Some(now);
        }
        if upgrade.as_ref().is_some_and(|u| u.is_finished()) {
            upgrade.take().context("upgrade handle")?.await??;
            rollout_secs = now;
        }
        if upgrade.is_none() && new_leader_at.is_some_and(|at| now > at + 3.0) {
            break;
        }
        if now > 240.0 {
            bail!("rollout: helm done {}, holders {holders:?}", upgrade.is_none());
        }
        if Instant::now() >= next_change {
            let n = added.len();
            let group = format!("00000000-0000-4000-8000-{n:012}");
            let b = in_ns(
                mongo_binding(&format!("rollout-{n}"), "orders-mongo", &group, &[("read", "orders")]),
                "team-orders",
            );
            cluster.apply(&cluster.admin, &b, None).await?;
            added.push((b, group));
            next_change = Instant::now() + Duration::from_millis(1500);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (b, _) in &added {
        cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    }
    let after = pods(cluster).await?;
    assert_eq!(after.len(), 2, "two replicas after the rollout: {after:?}");
    assert!(after.keys().all(|p| !before.contains_key(p)), "every pod replaced: before {before:?}, after {after:?}");
    assert!(after.values().all(|(ready, restarts)| *ready && *restarts == 0), "new pods Ready: {after:?}");
    let new_leader = holder(cluster).await?.context("no Lease holder after the rollout")?;
    assert!(after.contains_key(&new_leader), "the Lease holder {new_leader} is not a new pod: {after:?}");
    // Each handover: from the moment the leader was seen terminating to
    // the moment another pod held the Lease.
    let mut handovers = Vec::new();
    let mut held_by: Option<&str> = None;
    for (at, h) in &holders {
        let Some(h) = h.as_deref() else { continue };
        if let Some(prev) = held_by.filter(|prev| *prev != h) {
            let since = stopping.get(prev).copied().with_context(|| {
                format!(
                    "leadership moved from {prev} to {h} at {at:.1}s but {prev} was never seen stopping: {holders:?}"
                )
            })?;
            handovers.push(at - since);
        }
        held_by = Some(h);
    }
    let handover = handovers.iter().copied().fold(0.0, f64::max);
    let distinct: BTreeSet<_> = holders.iter().filter_map(|(_, h)| h.clone()).collect();
    // Each binding added during the rollout created its role once, and no
    // write was applied twice across the handover.
    for (_, group) in &added {
        let creates = double
            .commands_named("createRole")
            .iter()
            .filter(|r| r.body.get_str("createRole").ok() == Some(&format!("entra/{group}")))
            .count();
        assert_eq!(creates, 1, "createRole entra/{group} sent {creates} times");
        assert!(double.role(&format!("entra/{group}"), "admin").is_some(), "role of {group} on the server");
    }
    let dups = duplicate_creates(&double);
    assert!(dups.is_empty(), "double applies: {dups:?}");
    let repeats = repeated_writes(&double);
    assert!(repeats.is_empty(), "writes repeated with the same content: {repeats:?}");
    let rollout_writes = double.user_management_log().len() - writes_before;
    assert!(!handovers.is_empty(), "the rollout never moved the Lease: {holders:?}");
    assert!(
        handover < HANDOVER_LIMIT.as_secs_f64(),
        "a leader was replaced {handover:.1}s after it began to stop (limit {HANDOVER_LIMIT:?}): holders {holders:?}, \
         stopping {stopping:?}"
    );

    // 4. The new leader revokes: delete an example binding.
    let t = Instant::now();
    cluster.delete(&cluster.admin, &bindings[1], None).await?;
    cluster.wait_gone(&bindings[1], None, SETTLE).await?;
    let revoke_secs = t.elapsed().as_secs_f64();
    assert!(double.role(&format!("entra/{READERS}"), "admin").is_none(), "readers' role dropped with its binding");

    // The pods' logs: no panic, no RBAC denial (the chart's RBAC sufficed
    // with the kubelet's projected token).
    let logs = all_pod_log_text(node);
    assert!(!logs.contains("panicked"), "an operator pod panicked:\n{}", pod_logs(node));
    assert!(!logs.contains("forbidden") && !logs.contains("Forbidden"), "RBAC denials:\n{}", pod_logs(node));

    summary(&format!(
        "node: control plane + node up in {cp_secs:.1}s (node Ready {:.1}s); helm install --wait {install_secs:.1}s, \
         2/2 pods Ready, leader {leader}; MongoDB examples Ready in {examples_secs:.1}s, Cosmos DB examples \
         ({} assignments, federated token issued by {issuer_name}) in {cosmos_secs:.1}s; helm upgrade --wait {rollout_secs:.1}s, \
         {} bindings added meanwhile, {} leaders seen ({}), handovers {} s after the leader began to stop; \
         {rollout_writes} role writes, 0 double applies; revoke by the new leader {revoke_secs:.1}s",
        node.ready_seconds,
        grants.len(),
        added.len(),
        distinct.len(),
        holders.iter().map(|(s, h)| format!("{s:.1}s:{}", h.as_deref().unwrap_or("-"))).collect::<Vec<_>>().join(" "),
        handovers.iter().map(|h| format!("{h:.1}")).collect::<Vec<_>>().join("/"),
    ));
    dump.passed();
    Ok(())
}
