//! MongoDB end to end: the real apiserver, the operator process as the
//! chart's identity, and the MongoDB wire-protocol double over TCP.

use std::time::Duration;

use anyhow::Result;
use dbgrant_doubles::mongo::{MongoDouble, Resource};
use dbgrant_harness::{manifests, operator::metric_sum};
use serde_json::{Value, json};

use crate::common::{
    SETTLE, cleanup, in_ns, mongo_binding, mongo_double, mongo_target, operator, operator_lock, setup,
};

const READERS: &str = "71b72785-7c23-4e2e-9fa7-ad62ce90a22a";
const WRITERS: &str = "cc26f19f-4a57-4faa-9f42-a75454c72497";

/// The role names and dbs the double holds for `entra/<group>` in admin.
fn granted(double: &MongoDouble, group: &str) -> Option<Vec<String>> {
    let role = double.role(&format!("entra/{group}"), "admin")?;
    let mut roles: Vec<String> = role.roles.iter().map(|r| format!("{}@{}", r.role, r.db)).collect();
    roles.sort();
    Some(roles)
}

/// The examples, with their placeholder Secret values pointed at the double.
fn examples_against(double: &MongoDouble) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut target = manifests::example("mongo-target.yaml")?;
    let conn = manifests::find_mut(&mut target, "Secret", "orders-mongo-connection").expect("connection Secret");
    conn["stringData"]["uri"] = json!(double.uri());
    let scram = manifests::find_mut(&mut target, "Secret", "orders-mongo-scram").expect("SCRAM Secret");
    scram["stringData"] = json!({"username": crate::common::MONGO_ADMIN.0, "password": crate::common::MONGO_ADMIN.1});
    Ok((target, manifests::example("mongo-rolebindings.yaml")?))
}

/// Delete what a test created at the top level and wait until its targets
/// are gone: a deleted target waits for every binding and role definition
/// that uses it, so this also shows nothing was left holding it.
async fn delete_targets(cluster: &dbgrant_harness::Cluster, docs: &[Value]) -> Result<()> {
    cleanup(cluster, docs).await;
    for d in docs.iter().filter(|d| manifests::kind(d).ends_with("Target")) {
        cluster.wait_gone(d, None, SETTLE).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_examples_become_ready_and_grant_roles_on_the_server() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, _ns, mut dump) = setup("mongo-examples").await?;
    let double = mongo_double().await?;
    let (target, bindings) = examples_against(&double)?;
    let mut op = operator(&cluster, "mongo-examples", Duration::from_secs(300), &mut dump).await?;
    let mut dump2 = dbgrant_harness::DumpOnFailure::new(&cluster, &["team-orders"]);
    dump2.log(op.log.clone());

    cluster.apply_all(&cluster.admin, &target, None).await?;
    cluster.apply_all(&cluster.admin, &bindings, None).await?;
    let t = &target[2];
    let tgt = cluster.wait_condition(t, None, "Ready", "True", Some("Connected"), SETTLE).await?;
    assert_eq!(tgt.data["status"]["tlsVerification"], "NotUsed", "plain TCP to the double is not TLS");
    for b in bindings.iter().filter(|d| manifests::kind(d) == "MongoRoleBinding") {
        cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    }
    assert_eq!(granted(&double, READERS), Some(vec!["read@orders".to_string()]));
    assert_eq!(granted(&double, WRITERS), Some(vec!["readWrite@orders".to_string()]));
    let writers = double.role(&format!("entra/{WRITERS}"), "admin").expect("writers role");
    let audit = writers.privileges.iter().find(|p| p.resource == Resource::collection("orders", "audit"));
    let mut actions = audit.map(|p| p.actions.clone()).unwrap_or_default();
    actions.sort();
    assert_eq!(actions, ["find", "insert"], "writers' audit privilege");

    // Deleting a binding revokes its role and releases the finalizer.
    cluster.delete(&cluster.admin, &bindings[1], None).await?;
    cluster.wait_gone(&bindings[1], None, SETTLE).await?;
    assert_eq!(granted(&double, READERS), None, "readers' role must be dropped with its binding");
    assert!(granted(&double, WRITERS).is_some(), "writers' role must be untouched");

    // The chart's RBAC sufficed: nothing was forbidden.
    let log = op.log_text();
    assert!(
        !log.contains("forbidden") && !log.contains("Forbidden"),
        "operator hit RBAC denials:\n{}",
        op.log_tail(80)
    );
    let metrics = op.metrics().await?;
    assert!(metric_sum(&metrics, "dbgrant_backend_operations_total", &[("operation", "createRole")]) >= 2.0);

    cluster.delete(&cluster.admin, &bindings[2], None).await?;
    cluster.wait_gone(&bindings[2], None, SETTLE).await?;
    assert_eq!(granted(&double, WRITERS), None);
    delete_targets(&cluster, &target).await?;
    assert!(op.stop(Duration::from_secs(10)).await?, "operator did not exit cleanly on SIGTERM");
    dump.passed();
    dump2.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backends_report_not_ready_and_bindings_wait() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("unreachable").await?;
    // A port nothing listens on, and the example's SRV name (no DNS here).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let refused = format!("unreach-tcp-{}", ns.name.rsplit('-').next().unwrap_or("0"));
    let srv = format!("unreach-srv-{}", ns.name.rsplit('-').next().unwrap_or("0"));
    let mut docs = mongo_target(&refused, &format!("mongodb://{closed}/"), &["e2e-*"], &cluster.operator_namespace);
    docs.extend(mongo_target(
        &srv,
        "mongodb+srv://orders-mongo.example.internal/?tls=true",
        &["e2e-*"],
        &cluster.operator_namespace,
    ));
    let binding = in_ns(mongo_binding("waits", &refused, READERS, &[("read", "orders")]), &ns.name);
    // The Cosmos example as is: Azure's public endpoints (no internet here)
    // and a workload identity the operator process does not have.
    let mut cosmos = manifests::example("cosmos-target.yaml")?.remove(0);
    let cosmos_name = format!("unreach-cosmos-{}", ns.name.rsplit('-').next().unwrap_or("0"));
    cosmos["metadata"]["name"] = json!(cosmos_name);
    cosmos["spec"]["policy"]["allowedNamespaces"] = json!(["e2e-*"]);
    let mut cosmos_binding = manifests::example("cosmos-rolebindings.yaml")?.remove(1);
    cosmos_binding["spec"]["targetRef"]["name"] = json!(cosmos_name);
    let cosmos_binding = in_ns(cosmos_binding, &ns.name);
    let mut op = operator(&cluster, "unreachable", Duration::from_secs(300), &mut dump).await?;
    cluster.apply_all(&cluster.admin, &docs, None).await?;
    cluster.apply(&cluster.admin, &binding, None).await?;
    cluster.apply(&cluster.admin, &cosmos, None).await?;
    cluster.apply(&cluster.admin, &cosmos_binding, None).await?;

    for t in [&docs[2], &docs[5]] {
        let o = cluster.wait_condition(t, None, "Ready", "False", Some("Unreachable"), SETTLE).await?;
        let msg = crate::common::ready_message(&o);
        assert!(msg.contains(manifests::name(t)), "message should name the target: {msg}");
    }
    cluster.wait_condition(&binding, None, "Ready", "False", Some("TargetNotReady"), SETTLE).await?;
    let o = cluster.wait_condition(&cosmos, None, "Ready", "False", None, SETTLE).await?;
    let reason = dbgrant_harness::cluster::condition(&o, "Ready").map(|c| c["reason"].to_string()).unwrap_or_default();
    assert!(!crate::common::ready_message(&o).is_empty(), "Cosmos target needs a message ({reason})");
    eprintln!("Cosmos target without Azure: {reason}: {}", crate::common::ready_message(&o));
    cluster.wait_condition(&cosmos_binding, None, "Ready", "False", Some("TargetNotReady"), SETTLE).await?;
    // Waiting is not a hot loop: over 10 s the binding is reconciled a
    // handful of times at most, and the operator is still up.
    let before = metric_sum(&op.metrics().await?, "dbgrant_reconciles_total", &[("kind", "MongoRoleBinding")]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = metric_sum(&op.metrics().await?, "dbgrant_reconciles_total", &[("kind", "MongoRoleBinding")]);
    assert!(after - before <= 3.0, "binding reconciled {} times in 10 s while its target was down", after - before);
    assert!(op.is_running(), "operator crashed:\n{}", op.log_tail(60));

    delete_targets(&cluster, &[binding, cosmos_binding.clone(), cosmos.clone()]).await?;
    cluster.wait_gone(&cosmos_binding, None, SETTLE).await?;
    cluster.wait_gone(&in_ns(mongo_binding("waits", &refused, READERS, &[]), &ns.name), None, SETTLE).await.ok();
    delete_targets(&cluster, &docs).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_binding_while_the_operator_is_down_revokes_on_restart() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("finalizer").await?;
    let double = mongo_double().await?;
    let name = format!("fin-{}", ns.name.rsplit('-').next().unwrap_or("0"));
    let target = mongo_target(&name, &double.uri(), &["e2e-*"], &cluster.operator_namespace);
    let binding = in_ns(mongo_binding("readers", &name, READERS, &[("read", "orders")]), &ns.name);
    let mut op = operator(&cluster, "finalizer", Duration::from_secs(300), &mut dump).await?;
    cluster.apply_all(&cluster.admin, &target, None).await?;
    cluster.apply(&cluster.admin, &binding, None).await?;
    cluster.wait_condition(&binding, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    assert!(granted(&double, READERS).is_some());

    assert!(op.stop(Duration::from_secs(10)).await?, "operator did not exit cleanly on SIGTERM");
    cluster.delete(&cluster.admin, &binding, None).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stuck =
        cluster.get(&cluster.admin, &binding, None).await?.expect("binding must stay while the operator is down");
    assert!(stuck.metadata.deletion_timestamp.is_some(), "binding should be Terminating");
    assert_eq!(stuck.metadata.finalizers.as_deref(), Some(&["dbgrant.io/revoke".to_string()][..]));
    assert!(granted(&double, READERS).is_some(), "nothing may be revoked while the operator is down");

    op.spawn().await?;
    cluster.wait_gone(&binding, None, SETTLE).await?;
    assert_eq!(granted(&double, READERS), None, "revocation must complete after restart");
    delete_targets(&cluster, &target).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_bindings_apply_nothing_and_say_why() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("policy").await?;
    let double = mongo_double().await?;
    let name = format!("pol-{}", ns.name.rsplit('-').next().unwrap_or("0"));
    // Only team-* namespaces may use this target: the test namespace may not.
    let target = mongo_target(&name, &double.uri(), &["team-*"], &cluster.operator_namespace);
    let outsider = in_ns(mongo_binding("outsider", &name, READERS, &[("read", "orders")]), &ns.name);
    let mut op = operator(&cluster, "policy", Duration::from_secs(300), &mut dump).await?;
    cluster.apply_all(&cluster.admin, &target, None).await?;
    cluster.apply(&cluster.admin, &outsider, None).await?;
    let o = cluster.wait_condition(&outsider, None, "Ready", "False", Some("GrantDenied"), SETTLE).await?;
    assert!(crate::common::ready_message(&o).contains(&ns.name), "denial should name the namespace");

    // Escalation from an allowed namespace: root, and userAdminAnyDatabase.
    let team = format!("team-{}", ns.name);
    cluster.ensure_namespace(&team).await?;
    let mut escalations = Vec::new();
    for (i, role) in [("root", "admin"), ("userAdminAnyDatabase", "admin")].into_iter().enumerate() {
        let b = in_ns(mongo_binding(&format!("escalate-{i}"), &name, WRITERS, &[role]), &team);
        cluster.apply(&cluster.admin, &b, None).await?;
        let o = cluster.wait_condition(&b, None, "Ready", "False", Some("GrantDenied"), SETTLE).await?;
        assert!(crate::common::ready_message(&o).contains(role.0), "denial should name {}", role.0);
        escalations.push(b);
    }
    assert!(double.roles().iter().all(|r| !r.name.role.starts_with("entra/")), "a forbidden binding created a role");
    assert!(double.user_management_log().iter().all(|c| c.name != "createRole"), "a forbidden binding wrote");

    let mut all = vec![outsider];
    all.extend(escalations);
    cleanup(&cluster, &all).await;
    for b in &all {
        cluster.wait_gone(b, None, SETTLE).await?;
    }
    delete_targets(&cluster, &target).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_revokes_at_the_instant() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("expiry").await?;
    let double = mongo_double().await?;
    let name = format!("exp-{}", ns.name.rsplit('-').next().unwrap_or("0"));
    let target = mongo_target(&name, &double.uri(), &["e2e-*"], &cluster.operator_namespace);
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(8);
    let mut binding = in_ns(mongo_binding("temporary", &name, READERS, &[("read", "orders")]), &ns.name);
    binding["spec"]["expiresAt"] = json!(expires.to_string());
    let mut op = operator(&cluster, "expiry", Duration::from_secs(300), &mut dump).await?;
    cluster.apply_all(&cluster.admin, &target, None).await?;
    cluster.apply(&cluster.admin, &binding, None).await?;
    cluster.wait_condition(&binding, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    assert!(granted(&double, READERS).is_some());
    cluster.wait_condition(&binding, None, "Ready", "False", Some("Expired"), SETTLE).await?;
    let revoked_at = jiff::Timestamp::now();
    assert_eq!(granted(&double, READERS), None, "expired binding's role must be dropped");
    assert!(revoked_at >= expires, "revoked before expiry");

    cleanup(&cluster, std::slice::from_ref(&binding)).await;
    cluster.wait_gone(&binding, None, SETTLE).await?;
    delete_targets(&cluster, &target).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_target_waits_for_its_bindings_so_they_can_revoke() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("target-finalizer").await?;
    let double = mongo_double().await?;
    let name = format!("tfin-{}", ns.name.rsplit('-').next().unwrap_or("0"));
    let docs = mongo_target(&name, &double.uri(), &["e2e-*"], &cluster.operator_namespace);
    let target = docs[2].clone();
    let binding = in_ns(mongo_binding("readers", &name, READERS, &[("read", "orders")]), &ns.name);
    let mut op = operator(&cluster, "target-finalizer", Duration::from_secs(300), &mut dump).await?;
    cluster.apply_all(&cluster.admin, &docs, None).await?;
    cluster.apply(&cluster.admin, &binding, None).await?;
    cluster.wait_condition(&binding, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    assert!(granted(&double, READERS).is_some());
    let t = cluster.get(&cluster.admin, &target, None).await?.expect("target");
    assert!(
        t.metadata.finalizers.iter().flatten().any(|f| f == "dbgrant.io/bindings"),
        "targets carry the bindings finalizer: {:?}",
        t.metadata.finalizers
    );

    // The target alone is deleted: it stays, says why, and the binding's
    // access stays until the binding itself goes.
    cluster.delete(&cluster.admin, &target, None).await?;
    let t = cluster.wait_condition(&target, None, "Ready", "False", Some("Terminating"), SETTLE).await?;
    let msg = crate::common::ready_message(&t);
    assert!(msg.starts_with("Terminating: waiting for 1 "), "{msg}");
    assert!(msg.contains(&format!("{}/readers", ns.name)), "the message should name the binding: {msg}");
    let b = cluster.wait_condition(&binding, None, "Ready", "False", Some("TargetNotReady"), SETTLE).await?;
    assert!(crate::common::ready_message(&b).contains("being deleted"), "{}", crate::common::ready_message(&b));
    assert!(granted(&double, READERS).is_some(), "a live binding keeps its access while its target waits");

    // Then the binding (as a GitOps prune would, right after): it revokes
    // through the waiting target, and both go.
    cluster.delete(&cluster.admin, &binding, None).await?;
    cluster.wait_gone(&binding, None, SETTLE).await?;
    cluster.wait_gone(&target, None, SETTLE).await?;
    assert_eq!(granted(&double, READERS), None, "the binding's role must be dropped before its target goes");
    assert!(!op.log_text().contains("nothing to revoke"), "revocation was skipped:\n{}", op.log_tail(40));

    // Both at once, target first: the same.
    cluster.apply_all(&cluster.admin, &docs, None).await?;
    cluster.apply(&cluster.admin, &binding, None).await?;
    cluster.wait_condition(&binding, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    assert!(granted(&double, READERS).is_some());
    cluster.delete(&cluster.admin, &target, None).await?;
    cluster.delete(&cluster.admin, &binding, None).await?;
    cluster.wait_gone(&binding, None, SETTLE).await?;
    cluster.wait_gone(&target, None, SETTLE).await?;
    assert_eq!(granted(&double, READERS), None, "pruned together, the role must still be dropped");
    assert!(double.roles().iter().all(|r| !r.name.role.starts_with("entra/")), "roles left: {:?}", double.roles());

    delete_targets(&cluster, &docs).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}
