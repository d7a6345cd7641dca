//! The chart's finalizer policy (`finalizerPolicy.enabled`, on by default)
//! on a control plane that serves MutatingAdmissionPolicy: a new binding carries
//! dbgrant's finalizer from its creation, the operator does not patch it to
//! add one, and it is applied and revoked exactly as without the policy.
//!
//! This test starts its own control plane with the flags that enable the
//! beta API (`MUTATING_ADMISSION_POLICY`); the rest of the suite runs on
//! one without it, where the operator adds the finalizer itself.

use std::time::Duration;

use anyhow::{Result, ensure};
use dbgrant_harness::{
    Cluster, DumpOnFailure, chart,
    cluster::FIELD_MANAGER,
    controlplane::{ControlPlane, MUTATING_ADMISSION_POLICY},
    manifests,
};

use crate::common::{SETTLE, in_ns, mongo_binding, mongo_double, mongo_target, operator, operator_lock};

const READERS: &str = "5b0c6a4e-1f0e-4c55-9e55-3f5b2f8e6a01";
const FINALIZER: &str = "dbgrant.io/revoke";

/// The policy is rendered by default wherever the cluster serves the API
/// (v1 from Kubernetes 1.36, v1beta1 where enabled), nowhere else, and not
/// when turned off.
#[test]
fn the_chart_installs_the_policy_by_default_where_the_cluster_serves_it() -> Result<()> {
    let policies = |set: &[&str], api: &[&str]| -> Result<Vec<String>> {
        Ok(chart::template_for("dbgrant-system", set, api)?
            .iter()
            .filter(|d| manifests::kind(d).starts_with("MutatingAdmissionPolicy"))
            .map(|d| format!("{} {}", d["apiVersion"].as_str().unwrap_or("?"), manifests::kind(d)))
            .collect())
    };
    const V1: &str = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy";
    const V1BETA1: &str = "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy";
    let both = |v: &str| vec![format!("{v} MutatingAdmissionPolicy"), format!("{v} MutatingAdmissionPolicyBinding")];
    ensure!(policies(&[], &[V1])? == both("admissionregistration.k8s.io/v1"), "GA clusters get the v1 policy");
    ensure!(policies(&[], &[V1BETA1, V1])? == both("admissionregistration.k8s.io/v1"), "v1 is preferred");
    ensure!(policies(&[], &[V1BETA1])? == both("admissionregistration.k8s.io/v1beta1"), "beta where enabled");
    ensure!(policies(&[], &[])?.is_empty(), "nothing where the cluster does not serve the API");
    ensure!(policies(&["finalizerPolicy.enabled=false"], &[V1])?.is_empty(), "nothing when turned off");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finalizer_policy_adds_the_finalizer_at_creation_and_the_operator_does_not_patch() -> Result<()> {
    let _lock = operator_lock().await;
    let cp = tokio::task::spawn_blocking(|| ControlPlane::start_with(&MUTATING_ADMISSION_POLICY)).await??;
    let cluster = Cluster::connect(&cp.info).await?;
    cluster.install().await?;
    let ns = cluster.namespace("finalizer-policy").await?;
    let mut dump = DumpOnFailure::new(&cluster, &[&ns.name]);
    let binding = in_ns(mongo_binding("readers", "orders", READERS, &[("read", "orders")]), &ns.name);
    cluster.install_finalizer_policy(&binding, FINALIZER).await?;

    let double = mongo_double().await?;
    let target = mongo_target("orders", &double.uri(), &[&ns.name], &cluster.operator_namespace);
    let mut op = operator(&cluster, "finalizer-policy", Duration::from_secs(300), &mut dump).await?;
    cluster.apply_all(&cluster.admin, &target, None).await?;
    cluster.wait_condition(&target[2], None, "Ready", "True", Some("Connected"), SETTLE).await?;

    let created = cluster.apply(&cluster.admin, &binding, None).await?;
    let finalizers = created.metadata.finalizers.clone().unwrap_or_default();
    ensure!(finalizers == [FINALIZER], "the policy puts the finalizer on at creation: {finalizers:?}");
    let ready = cluster.wait_condition(&binding, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    // Whoever wrote metadata.finalizers owns it in managedFields: only the
    // creator's request (the policy acts inside it), never an operator patch.
    for entry in ready.metadata.managed_fields.iter().flatten() {
        let fields = serde_json::to_string(&entry.fields_v1).unwrap_or_default();
        if fields.contains("f:finalizers") {
            ensure!(
                entry.manager.as_deref() == Some(FIELD_MANAGER),
                "metadata.finalizers written by {:?} ({:?}), not only by the creator",
                entry.manager,
                entry.operation
            );
        }
    }
    ensure!(double.role(&format!("entra/{READERS}"), "admin").is_some(), "the binding's role is granted");

    // The finalizer does its job: deleting revokes first, then it goes.
    cluster.delete(&cluster.admin, &binding, None).await?;
    cluster.wait_gone(&binding, None, SETTLE).await?;
    ensure!(double.role(&format!("entra/{READERS}"), "admin").is_none(), "deleting the binding revokes its role");
    op.stop(Duration::from_secs(30)).await?;
    dump.passed();
    Ok(())
}
