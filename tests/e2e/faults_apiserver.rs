//! Fault scenario on the control plane itself, on a private one: spec
//! updates and a foreign finalizer that conflict with the operator's
//! writes, the apiserver cut off from the operator (connections cut and
//! refused through a proxy), and etcd + apiserver frozen, while
//! MongoRoleBindings churn. It ends with the MongoDB convergence check of
//! `faults_mongo_model.rs`; the knobs are in `faults_common.rs`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dbgrant_harness::{
    Cluster, DumpOnFailure, Operator,
    controlplane::ControlPlane,
    operator::{Options, metric_sum},
    proxy::TcpProxy,
};
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::common::{mongo_double, operator_lock};
use crate::faults_common::{env_u64, long, no_panics, seed, summary};
use crate::faults_mongo_model::{Churn, duplicate_creates, settle, target_doc, targets};

/// A copy of `kubeconfig` whose clusters point at `server`.
fn kubeconfig_via(kubeconfig: &std::path::Path, server: &str, out: &std::path::Path) -> Result<()> {
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig)?)?;
    if let Some(clusters) = kc.get_mut("clusters").and_then(|c| c.as_sequence_mut()) {
        for c in clusters {
            if let Some(cluster) = c.get_mut("cluster").and_then(|c| c.as_mapping_mut()) {
                cluster.insert("server".into(), server.into());
            }
        }
    }
    std::fs::write(out, serde_yaml::to_string(&kc)?)?;
    Ok(())
}

/// Spec updates with optimistic concurrency (GET, change, PUT with the
/// resourceVersion), retried on 409: the operator writes status and
/// finalizers on the same objects at the same time. Returns the 409s seen.
async fn conflicting_updates(churn: &mut Churn, n: usize) -> Result<u64> {
    let api = churn.cluster.dbgrant(&churn.cluster.admin, "MongoRoleBinding", Some(&churn.ns)).await?;
    let mut conflicts = 0;
    for _ in 0..n {
        let names: Vec<String> = churn.live.keys().cloned().collect();
        let name = churn.rng.pick(&names).clone();
        let target = churn.live[&name].target;
        let mut spec = churn.random_spec(target);
        spec.groups = churn.live[&name].groups.clone();
        let doc = churn.manifest(&name, &spec);
        loop {
            let mut obj: DynamicObject = api.get(&name).await?;
            obj.data["spec"] = doc["spec"].clone();
            match api.replace(&name, &PostParams::default(), &obj).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 409 => conflicts += 1,
                Err(e) => return Err(e.into()),
            }
        }
        churn.live.insert(name, spec);
        churn.ops.updates += 1;
    }
    Ok(conflicts)
}

/// Add or remove a foreign finalizer with a merge patch that carries the
/// resourceVersion it was computed from (409 when anything changed in
/// between), retried — racing the operator's own finalizer patch.
async fn foreign_finalizer(api: &Api<DynamicObject>, name: &str, add: bool) -> Result<u64> {
    const FOREIGN: &str = "e2e.dbgrant.io/hold";
    let mut retries = 0;
    loop {
        let obj = api.get(name).await?;
        let mut next: Vec<String> =
            obj.metadata.finalizers.clone().unwrap_or_default().into_iter().filter(|f| f != FOREIGN).collect();
        if add {
            next.push(FOREIGN.into());
        }
        let patch = json!({"metadata": {"resourceVersion": obj.metadata.resource_version, "finalizers": next}});
        match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(retries),
            Err(kube::Error::Api(s)) if s.code == 409 => retries += 1,
            Err(e) => return Err(e.into()),
        }
        if retries > 50 {
            bail!("could not change the finalizers of {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_write_conflicts_outage_and_freeze_are_ridden_through() -> Result<()> {
    let _lock = operator_lock().await;
    let seed = seed();
    let cut_for = Duration::from_secs(env_u64("DBGRANT_FAULT_APISERVER_OUTAGE_SECS", 15));
    let freeze_for = Duration::from_secs(env_u64("DBGRANT_FAULT_FREEZE_SECS", 8));
    // A private control plane: this test freezes it.
    let cp = tokio::task::spawn_blocking(ControlPlane::start).await??;
    let cluster = Cluster::connect(&cp.info).await?;
    cluster.install().await?;
    let ns = cluster.namespace("cp").await?;
    let mut dump = DumpOnFailure::new(&cluster, &[&ns.name]);
    // The operator reaches the apiserver through a proxy the test can cut.
    let upstream: std::net::SocketAddr = cp.info.server.trim_start_matches("https://").parse()?;
    let proxy = TcpProxy::start(upstream).await?;
    let proxied = cp.info.dir.join("operator-via-proxy.kubeconfig");
    kubeconfig_via(&cluster.operator_kubeconfig, &format!("https://{}", proxy.addr), &proxied)?;
    let op_cluster = Cluster { operator_kubeconfig: proxied, ..cluster.clone() };

    let double = mongo_double().await?;
    let (docs, infos) = targets(&[("cp-target", "cp", double.uri())], &cluster.operator_namespace, &ns.name);
    let mut options = Options::new(env!("CARGO_BIN_EXE_dbgrant"), "controlplane");
    options.resync = Duration::from_secs(60);
    let mut op = Operator::start(&op_cluster, options).await?;
    dump.log(op.log.clone());
    cluster.apply_all(&cluster.admin, &docs, None).await?;
    cluster.wait_condition(&target_doc(&infos[0].name), None, "Ready", "True", None, Duration::from_secs(30)).await?;
    let mut churn = Churn::new(&cluster, &ns.name, infos.clone(), seed ^ 0xc0c0);
    let api = cluster.dbgrant(&cluster.admin, "MongoRoleBinding", Some(&ns.name)).await?;

    // 1. Write conflicts: a foreign finalizer races the operator's, and
    //    spec updates race its status writes.
    let mut finalizer_retries = 0;
    let mut held = Vec::new();
    for _ in 0..8 {
        let name = churn.create().await?;
        finalizer_retries += foreign_finalizer(&api, &name, true).await?;
        held.push(name);
    }
    let n_updates = if long() { 120 } else { 40 };
    let conflicts = conflicting_updates(&mut churn, n_updates).await?;
    settle(&churn, &[&double], Duration::from_secs(60)).await.context("after conflicting writes")?;
    for name in &held {
        finalizer_retries += foreign_finalizer(&api, name, false).await?;
    }
    let m = op.metrics().await?;
    let operator_conflicts = metric_sum(&m, "dbgrant_reconcile_errors_total", &[("category", "kubernetes")])
        + metric_sum(&m, "dbgrant_reconcile_errors_total", &[("category", "finalizer")]);

    // 2. The apiserver disappears for the operator (every connection cut,
    //    new ones refused) while users keep changing bindings.
    let ops0 = churn.ops.total();
    proxy.refuse(true);
    proxy.cut_all();
    let cut = Instant::now();
    let refused0 = proxy.refused();
    while cut.elapsed() < cut_for {
        churn.step().await?;
        tokio::time::sleep(churn.rng.millis(300, 1200)).await;
    }
    let refused = proxy.refused() - refused0;
    proxy.refuse(false);
    let ops_cut = churn.ops.total() - ops0;
    assert!(op.is_running(), "the operator exited while the apiserver was unreachable:\n{}", op.log_tail(60));
    let after_cut = settle(&churn, &[&double], Duration::from_secs(90)).await.context("after the apiserver outage")?;

    // 3. The whole control plane (etcd + apiserver) freezes, then resumes.
    churn.steps(4, (50, 150)).await?;
    cp.freeze(true);
    tokio::time::sleep(freeze_for).await;
    cp.freeze(false);
    let resumed = Instant::now();
    churn.steps(6, (50, 150)).await?;
    settle(&churn, &[&double], Duration::from_secs(120)).await.context("after the freeze")?;
    let after_freeze = resumed.elapsed();
    assert!(op.is_running(), "the operator exited:\n{}", op.log_tail(60));
    no_panics(&op)?;
    assert!(duplicate_creates(&double).is_empty(), "{:?}", duplicate_creates(&double));
    summary(&format!(
        "apiserver: seed={seed:#x} conflicting spec updates={n_updates} (409s seen by the test={conflicts}, \
         finalizer patch retries={finalizer_retries}, operator reconcile errors from the apiserver={operator_conflicts}); \
         apiserver cut off {}s (refused connections={refused}, ops meanwhile={ops_cut}) converged {:.1}s after; \
         control plane frozen {}s, 6 changes after it converged {:.1}s after it resumed; total ops={}; \
         result=converged, operator never exited",
        cut_for.as_secs(),
        after_cut.as_secs_f64(),
        freeze_for.as_secs(),
        after_freeze.as_secs_f64(),
        churn.ops.total(),
    ));
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    drop(cp);
    Ok(())
}
