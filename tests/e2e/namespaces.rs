//! A team namespace deleted with its bindings — a routine GitOps prune —
//! on a control plane that runs the real kube-controller-manager: the
//! namespace controller deletes the bindings, dbgrant revokes every grant
//! before each binding (and so the namespace) can go, and the namespace
//! does go. Then a target deleted together with the namespaces of every
//! binding on it.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use dbgrant_harness::Cluster;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams};
use serde_json::json;

use crate::common::{SETTLE, in_ns, mongo_binding, mongo_double, mongo_target, operator_lock, setup};
use crate::cosmos::{READERS, arm_double, cosmos_binding, cosmos_target, new_account, suffix, workload_identity};
use crate::faults_common::summary;

const G1: &str = "d3849506-b7c8-4d29-a3e4-f40a51b6c7de";
const G2: &str = "e495a617-c8d9-4e3a-b4f5-0a51b6c7d8ef";

/// Delete namespace `name` and wait until the apiserver no longer has it;
/// when it went.
async fn delete_namespace(cluster: &Cluster, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(cluster.admin.clone());
    api.delete(name, &DeleteParams::default()).await?;
    Ok(())
}

async fn wait_namespace_gone(cluster: &Cluster, name: &str, timeout: Duration) -> Result<jiff::Timestamp> {
    let api: Api<Namespace> = Api::all(cluster.admin.clone());
    let deadline = Instant::now() + timeout;
    loop {
        if api.get_opt(name).await?.is_none() {
            return Ok(jiff::Timestamp::now());
        }
        if Instant::now() > deadline {
            let ns = api.get_opt(name).await?;
            bail!("namespace {name} still there after {timeout:?}: {:?}", ns.and_then(|n| n.status));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_revokes_its_grants_before_it_goes() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("ns-delete").await?;
    let double = mongo_double().await?;
    let cosmos = arm_double(&cluster).await?;
    let n = suffix(&ns.name);
    let mongo_name = format!("ns-delete-mongo-{n}");
    let mongo = mongo_target(&mongo_name, &double.uri(), &["e2e-*"], &cluster.operator_namespace);
    let account = new_account(&cosmos, &format!("e2e-nsdel-{n}"));
    let cosmos_t = cosmos_target(&format!("ns-delete-{n}"), &cosmos, &account, workload_identity(&cosmos));
    let cname = dbgrant_harness::manifests::name(&cosmos_t).to_string();
    let mut op = crate::cosmos::operator(&cluster, &cosmos, "ns-delete", Duration::from_secs(300), &mut dump).await?;
    cluster.apply_all(&cluster.admin, &mongo, None).await?;
    cluster.apply(&cluster.admin, &cosmos_t, None).await?;
    let bindings = [
        in_ns(mongo_binding("readers", &mongo_name, G1, &[("read", "orders")]), &ns.name),
        in_ns(
            cosmos_binding(
                "readers",
                &cname,
                READERS,
                json!({"builtIn": "DataReader"}),
                json!([{"database": "orders"}]),
            ),
            &ns.name,
        ),
    ];
    cluster.apply_all(&cluster.admin, &bindings, None).await?;
    for b in &bindings {
        cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), Duration::from_secs(60)).await?;
    }
    assert!(double.role(&format!("entra/{G1}"), "admin").is_some());
    assert_eq!(cosmos.double.role_assignments(&account).len(), 1);

    let deleted = Instant::now();
    delete_namespace(&cluster, &ns.name).await?;
    let gone_at = wait_namespace_gone(&cluster, &ns.name, Duration::from_secs(90)).await?;
    assert!(double.role(&format!("entra/{G1}"), "admin").is_none(), "the MongoDB grant was revoked");
    assert!(cosmos.double.role_assignments(&account).is_empty(), "the Cosmos DB grant was revoked");
    // Revoked before the namespace went: the revocations' audit records
    // are older than the moment the namespace was seen gone.
    let revoked: Vec<jiff::Timestamp> = op
        .audit_records()?
        .iter()
        .filter(|r| r["action"] == "delete" && r["trigger"]["namespace"] == ns.name.as_str())
        .filter_map(|r| r["time"].as_str()?.parse().ok())
        .collect();
    assert_eq!(revoked.len(), 2, "one revocation per backend");
    assert!(revoked.iter().all(|t| *t <= gone_at), "{revoked:?} after {gone_at}");
    let ns_gone_after = deleted.elapsed();

    // A target deleted together with the namespaces of all its bindings.
    let (ns2, ns3) = (cluster.namespace("ns-delete-b").await?, cluster.namespace("ns-delete-c").await?);
    let spread = [
        in_ns(mongo_binding("b", &mongo_name, G1, &[("read", "orders")]), &ns2.name),
        in_ns(mongo_binding("c", &mongo_name, G2, &[("readWrite", "orders")]), &ns3.name),
    ];
    cluster.apply_all(&cluster.admin, &spread, None).await?;
    for b in &spread {
        cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    }
    let deleted = Instant::now();
    cluster.delete(&cluster.admin, &mongo[2], None).await?;
    delete_namespace(&cluster, &ns2.name).await?;
    delete_namespace(&cluster, &ns3.name).await?;
    for name in [&ns2.name, &ns3.name] {
        wait_namespace_gone(&cluster, name, Duration::from_secs(90)).await?;
    }
    cluster.wait_gone(&mongo[2], None, SETTLE).await?;
    let target_gone_after = deleted.elapsed();
    assert!(
        double.roles().iter().all(|r| !r.name.role.starts_with("entra/")),
        "every grant revoked before the target went: {:?}",
        double.roles()
    );

    crate::common::cleanup(&cluster, std::slice::from_ref(&cosmos_t)).await;
    cluster.wait_gone(&cosmos_t, None, SETTLE).await?;
    op.stop(Duration::from_secs(10)).await?;
    summary(&format!(
        "namespace deletion: a namespace with a MongoDB and a Cosmos DB binding deleted; both grants revoked \
         (2 audit records, both before it went), namespace gone {:.1}s after the delete; a MongoTarget deleted \
         with the 2 namespaces of its bindings: both roles revoked, target gone {:.1}s after",
        ns_gone_after.as_secs_f64(),
        target_gone_after.as_secs_f64()
    ));
    dump.passed();
    Ok(())
}
