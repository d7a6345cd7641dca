//! The revocation guarantee, tried by hostile tenants (BRIEF.md invariants
//! 4, 7 and 8; issue 14).
//!
//! Two tenant namespaces share one MongoTarget. Tenant A tries every route
//! to dbgrant's ledger and to roles dbgrant manages for other subjects, and
//! poisons a group tenant B also binds with a grant the server refuses.
//! B's delete, expiry and policy-driven revocation must each still remove
//! B's grant from the server — checked on the double right after each —
//! and a binding's finalizer goes only once the server no longer carries
//! it. `deletionPolicy: Retain` is the target's decision, not the tenant's.

use std::{io::Write, time::Duration};

use anyhow::Result;
use dbgrant_doubles::mongo::MongoDouble;
use dbgrant_harness::{Cluster, DumpOnFailure, Operator, TestNamespace};
use serde_json::{Value, json};

use crate::common::{SETTLE, cleanup, mongo_double, mongo_target, operator, operator_lock, ready_message, setup};

fn binding(name: &str, target: &str, ns: &str, group: &str, spec: Value) -> Value {
    let mut b = json!({
        "apiVersion": "dbgrant.io/v1alpha1", "kind": "MongoRoleBinding",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"targetRef": {"name": target}, "subjects": [{"kind": "Group", "objectId": group}]}
    });
    for (k, v) in spec.as_object().expect("spec object") {
        b["spec"][k] = v.clone();
    }
    b
}

/// `role@db` strings of a group's role on the double, sorted (empty when
/// the role does not exist).
fn grants(double: &MongoDouble, group: &str) -> Vec<String> {
    let Some(role) = double.role(&format!("entra/{group}"), "admin") else { return Vec::new() };
    let mut out: Vec<String> = role.roles.iter().map(|r| r.to_string()).collect();
    out.sort();
    out
}

/// Two tenants on one target and an operator; tenant B's bindings on the
/// shared group are Applied, then tenant A's poisoned binding on the same
/// group (a role the server does not have) is Rejected while B's stay
/// Applied.
struct Scene {
    cluster: Cluster,
    /// Tenant A's namespace (kept for the lifetime of the scene).
    _tenant_a: TestNamespace,
    double: MongoDouble,
    target: Vec<Value>,
    poison: Value,
    op: Operator,
    dump: DumpOnFailure,
    dump_b: DumpOnFailure,
}

impl Scene {
    async fn finish(mut self, leftovers: &[Value]) -> Result<()> {
        let mut all = leftovers.to_vec();
        all.push(self.poison.clone());
        for d in &all {
            let _ = self.cluster.delete(&self.cluster.admin, d, None).await;
        }
        for d in &all {
            self.cluster.wait_gone(d, None, SETTLE).await?;
        }
        cleanup(&self.cluster, &self.target).await;
        self.op.stop(Duration::from_secs(10)).await?;
        assert!(!self.op.log_text().contains("panicked"), "{}", self.op.log_tail(40));
        self.dump.passed();
        self.dump_b.passed();
        Ok(())
    }
}

const SHARED: &str = "5a5a0001-0000-4000-8000-000000000001";

async fn scene(label: &str, group: &str, mut b_bindings: Vec<Value>) -> Result<(Scene, Vec<Value>)> {
    let (cluster, tenant_a, mut dump) = setup(label).await?;
    let tenant_b = format!("{}-b", tenant_a.name);
    cluster.ensure_namespace(&tenant_b).await?;
    let dump_b = DumpOnFailure::new(&cluster, &[&tenant_b]);
    let double = mongo_double().await?;
    let n = tenant_a.name.rsplit('-').next().unwrap_or("0").to_string();
    let target_name = format!("{label}-{n}");
    let mut target =
        mongo_target(&target_name, &double.uri(), &[&tenant_a.name, &tenant_b], &cluster.operator_namespace);
    target[2]["spec"]["policy"]["allowedDatabases"] = json!(["orders", "orders-eu", "orders-us"]);
    let op = operator(&cluster, label, Duration::from_secs(300), &mut dump).await?;
    cluster.apply_all(&cluster.admin, &target, None).await?;
    cluster.wait_condition(&target[2], None, "Ready", "True", None, SETTLE).await?;
    for b in &mut b_bindings {
        b["metadata"]["namespace"] = json!(tenant_b);
        b["spec"]["targetRef"]["name"] = json!(target_name);
        cluster.apply(&cluster.admin, b, None).await?;
        cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    }
    let poison = binding(
        "poison",
        &target_name,
        &tenant_a.name,
        group,
        json!({"roles": [{"role": "read", "db": "orders"}, {"role": "noSuchRole", "db": "orders"}]}),
    );
    cluster.apply(&cluster.admin, &poison, None).await?;
    let o = cluster.wait_condition(&poison, None, "Ready", "False", Some("Rejected"), SETTLE).await?;
    assert!(ready_message(&o).contains("noSuchRole"), "{}", ready_message(&o));
    for b in &b_bindings {
        let o = cluster.get(&cluster.admin, b, None).await?.expect("B's binding");
        assert_eq!(dbgrant_harness::cluster::condition_status(&o, "Ready"), Some("True"), "{}", ready_message(&o));
    }
    let s = Scene { cluster, _tenant_a: tenant_a, double, target, poison, op, dump, dump_b };
    Ok((s, b_bindings))
}

/// A binding of tenant B on the shared group (namespace and target are
/// filled in by [`scene`]).
fn b_binding(name: &str, spec: Value) -> Value {
    binding(name, "", "", SHARED, spec)
}

fn roles(list: &[(&str, &str)]) -> Value {
    json!({"roles": list.iter().map(|(r, d)| json!({"role": r, "db": d})).collect::<Vec<_>>()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_shared_group_does_not_stop_another_tenants_delete() -> Result<()> {
    let _lock = operator_lock().await;
    let b = vec![
        b_binding("b-eu", roles(&[("read", "orders-eu")])),
        b_binding("b-orders", roles(&[("readWrite", "orders")])),
    ];
    let (s, b) = scene("rv-delete", SHARED, b).await?;
    assert_eq!(grants(&s.double, SHARED), ["read@orders-eu", "readWrite@orders"]);
    s.cluster.delete(&s.cluster.admin, &b[1], None).await?;
    s.cluster.wait_gone(&b[1], None, SETTLE).await?;
    // The finalizer went only after the server lost readWrite@orders.
    assert_eq!(grants(&s.double, SHARED), ["read@orders-eu"], "B's delete revoked B's grant, and only it");
    let _ = writeln!(
        std::io::stderr(),
        "reliability: revocation-delete: tenant A poisons B's group; B's delete revoked readWrite@orders before its finalizer went"
    );
    s.finish(&b[..1]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_shared_group_does_not_stop_another_tenants_expiry() -> Result<()> {
    let _lock = operator_lock().await;
    let at = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(25)).to_string();
    let mut short = b_binding("b-short", roles(&[("readWrite", "orders-us")]));
    short["spec"]["expiresAt"] = json!(at);
    let b = vec![b_binding("b-eu", roles(&[("read", "orders-eu")])), short];
    let (s, b) = scene("rv-expiry", SHARED, b).await?;
    assert_eq!(grants(&s.double, SHARED), ["read@orders-eu", "readWrite@orders-us"]);
    let o = s.cluster.wait_condition(&b[1], None, "Ready", "False", Some("Expired"), Duration::from_secs(90)).await?;
    assert!(ready_message(&o).contains("revoked"), "{}", ready_message(&o));
    assert_eq!(grants(&s.double, SHARED), ["read@orders-eu"], "expiry revoked readWrite@orders-us");
    let _ = writeln!(
        std::io::stderr(),
        "reliability: revocation-expiry: tenant A poisons B's group; B's expiry revoked readWrite@orders-us before status said Expired"
    );
    s.finish(&b).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_shared_group_does_not_stop_a_policy_driven_revocation() -> Result<()> {
    let _lock = operator_lock().await;
    let b =
        vec![b_binding("b-eu", roles(&[("read", "orders-eu")])), b_binding("b-us", roles(&[("read", "orders-us")]))];
    let (s, b) = scene("rv-policy", SHARED, b).await?;
    assert_eq!(grants(&s.double, SHARED), ["read@orders-eu", "read@orders-us"]);
    // The platform team withdraws orders-us from the target.
    let mut target = s.target[2].clone();
    target["spec"]["policy"]["allowedDatabases"] = json!(["orders", "orders-eu"]);
    s.cluster.apply(&s.cluster.admin, &target, None).await?;
    let o = s.cluster.wait_condition(&b[1], None, "Ready", "False", Some("GrantDenied"), SETTLE).await?;
    assert!(ready_message(&o).contains("orders-us"), "{}", ready_message(&o));
    assert_eq!(grants(&s.double, SHARED), ["read@orders-eu"], "the denied grant was revoked");
    let _ = writeln!(
        std::io::stderr(),
        "reliability: revocation-policy: tenant A poisons B's group; narrowing the target's policy revoked read@orders-us"
    );
    s.finish(&b).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_binding_turns_applied_when_a_siblings_change_lets_the_server_accept_it() -> Result<()> {
    let _lock = operator_lock().await;
    let b = vec![b_binding("b-eu", roles(&[("read", "orders-eu")]))];
    let (s, b) = scene("rv-refresh", SHARED, b).await?;
    // The DBA creates the role A asked for; nothing tells dbgrant. Another
    // binding on the group changes its union: A's grant is tried again and
    // A's status follows, without a change to A.
    s.double.insert_role(dbgrant_doubles::mongo::Role::new("noSuchRole", "orders"));
    let more = {
        let mut c = b[0].clone();
        c["metadata"]["name"] = json!("b-more");
        c["spec"]["roles"] = json!([{"role": "read", "db": "orders-us"}]);
        c
    };
    s.cluster.apply(&s.cluster.admin, &more, None).await?;
    s.cluster.wait_condition(&more, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    s.cluster.wait_condition(&s.poison, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    assert_eq!(grants(&s.double, SHARED), ["noSuchRole@orders", "read@orders", "read@orders-eu", "read@orders-us"]);
    let mut all = b.clone();
    all.push(more);
    s.finish(&all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_reach_neither_the_ledger_nor_other_subjects_roles() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("rv-ledger").await?;
    let double = mongo_double().await?;
    let n = ns.name.rsplit('-').next().unwrap_or("0").to_string();
    // The widest policy a platform team could write: every database by
    // pattern, admin by name, and the escalation opt-outs for the roles
    // that span every database. None of it opens the ledger.
    let wide = format!("rv-wide-{n}");
    let mut tdocs = mongo_target(&wide, &double.uri(), &[&ns.name], &cluster.operator_namespace);
    tdocs[2]["spec"]["policy"]["allowedDatabases"] = json!(["*", "admin", "dbgrant"]);
    tdocs[2]["spec"]["policy"]["allowEscalation"] =
        json!(["readWriteAnyDatabase", "readAnyDatabase", "root", "dbOwner"]);
    // A policy with `*` alone: admin, local and config stay closed.
    let star = format!("rv-star-{n}");
    let mut sdocs = mongo_target(&star, &double.uri(), &[&ns.name], &cluster.operator_namespace);
    sdocs[2]["spec"]["policy"]["allowedDatabases"] = json!(["*"]);
    let victim = "5a5a0002-0000-4000-8000-000000000002";
    let other_role = format!("entra/{victim}");
    let cases: Vec<(&str, &str, Value)> = vec![
        ("ledger-role", &wide, roles(&[("readWrite", "dbgrant")])),
        ("ledger-owner", &wide, roles(&[("dbOwner", "dbgrant")])),
        (
            "ledger-privilege",
            &wide,
            json!({"privileges": [{"resource": {"db": "dbgrant", "collection": "ownership"}, "actions": ["remove", "insert"]}]}),
        ),
        (
            "every-database",
            &wide,
            json!({"privileges": [{"resource": {"db": "", "collection": ""}, "actions": ["find"]}]}),
        ),
        ("any-database-role", &wide, roles(&[("readWriteAnyDatabase", "admin")])),
        ("read-any-database", &wide, roles(&[("readAnyDatabase", "admin")])),
        ("other-subjects-role", &wide, roles(&[(other_role.as_str(), "admin")])),
        ("admin-by-star", &star, roles(&[("read", "admin")])),
        ("config-by-star", &star, roles(&[("read", "config")])),
    ];
    let mut op = operator(&cluster, "rv-ledger", Duration::from_secs(300), &mut dump).await?;
    cluster.apply_all(&cluster.admin, &tdocs, None).await?;
    cluster.apply_all(&cluster.admin, &sdocs, None).await?;
    cluster.wait_condition(&tdocs[2], None, "Ready", "True", None, SETTLE).await?;
    cluster.wait_condition(&sdocs[2], None, "Ready", "True", None, SETTLE).await?;
    let mut docs = Vec::new();
    for (i, (label, target, spec)) in cases.iter().enumerate() {
        let group = format!("5a5a1{i:03x}-0000-4000-8000-000000000003");
        let b = binding(label, target, &ns.name, &group, spec.clone());
        cluster.apply(&cluster.admin, &b, None).await?;
        docs.push((label, group, b));
    }
    for (label, group, b) in &docs {
        let o = cluster.wait_condition(b, None, "Ready", "False", Some("GrantDenied"), SETTLE).await?;
        let msg = ready_message(&o);
        assert!(msg.starts_with("nothing applied"), "{label}: {msg}");
        assert!(double.role(&format!("entra/{group}"), "admin").is_none(), "{label}: a role was created");
    }
    assert!(double.roles().iter().all(|r| !r.name.to_string().contains("5a5a1")), "no tenant role at all");
    assert!(!op.log_text().contains("panicked"), "{}", op.log_tail(40));
    let _ = writeln!(
        std::io::stderr(),
        "reliability: tenant-isolation: {} routes to the ledger, every database, admin/config and other subjects' roles denied",
        docs.len()
    );
    let bindings: Vec<Value> = docs.into_iter().map(|(_, _, b)| b).collect();
    cleanup(&cluster, &bindings).await;
    for b in &bindings {
        cluster.wait_gone(b, None, SETTLE).await?;
    }
    cleanup(&cluster, &tdocs).await;
    cleanup(&cluster, &sdocs).await;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_is_the_targets_decision_and_expiry_always_revokes() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("rv-retain").await?;
    let double = mongo_double().await?;
    let n = ns.name.rsplit('-').next().unwrap_or("0").to_string();
    let strict = format!("rv-strict-{n}");
    let strict_docs = mongo_target(&strict, &double.uri(), &[&ns.name], &cluster.operator_namespace);
    let lenient = format!("rv-lenient-{n}");
    let mut lenient_docs = mongo_target(&lenient, &double.uri(), &[&ns.name], &cluster.operator_namespace);
    lenient_docs[2]["spec"]["policy"]["allowRetain"] = json!(true);
    lenient_docs[2]["spec"]["oidc"]["authNamePrefix"] = json!("lenient");
    let (g1, g2, g3) = (
        "5a5a0003-0000-4000-8000-000000000001",
        "5a5a0003-0000-4000-8000-000000000002",
        "5a5a0003-0000-4000-8000-000000000003",
    );
    let retain = |name: &str, target: &str, group: &str| {
        let mut b = binding(name, target, &ns.name, group, roles(&[("read", "orders")]));
        b["spec"]["deletionPolicy"] = json!("Retain");
        b
    };
    let denied = retain("keep-forever", &strict, g1);
    let kept = retain("kept", &lenient, g2);
    let mut expiring = retain("expiring", &lenient, g3);
    expiring["spec"]["expiresAt"] = json!((jiff::Timestamp::now() + jiff::SignedDuration::from_secs(20)).to_string());
    let mut op = operator(&cluster, "rv-retain", Duration::from_secs(300), &mut dump).await?;
    cluster.apply_all(&cluster.admin, &strict_docs, None).await?;
    cluster.apply_all(&cluster.admin, &lenient_docs, None).await?;
    for b in [&denied, &kept, &expiring] {
        cluster.apply(&cluster.admin, b, None).await?;
    }
    // Without allowRetain the tenant cannot turn its grant into a
    // permanent unmanaged one: the binding applies nothing.
    let o = cluster.wait_condition(&denied, None, "Ready", "False", Some("GrantDenied"), SETTLE).await?;
    assert!(ready_message(&o).contains("allowRetain"), "{}", ready_message(&o));
    assert!(double.role(&format!("entra/{g1}"), "admin").is_none());
    // Allowed: deleting leaves the role in place, unmanaged.
    cluster.wait_condition(&kept, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    cluster.delete(&cluster.admin, &kept, None).await?;
    cluster.wait_gone(&kept, None, SETTLE).await?;
    assert!(double.role(&format!("lenient/{g2}"), "admin").is_some(), "Retain kept the role");
    // Expiry revokes whatever the deletion policy says.
    cluster.wait_condition(&expiring, None, "Ready", "False", Some("Expired"), Duration::from_secs(90)).await?;
    assert!(double.role(&format!("lenient/{g3}"), "admin").is_none(), "expiry revoked a Retain binding");
    cluster.delete(&cluster.admin, &expiring, None).await?;
    cluster.wait_gone(&expiring, None, SETTLE).await?;
    assert!(double.role(&format!("lenient/{g3}"), "admin").is_none());
    let _ = writeln!(
        std::io::stderr(),
        "reliability: retain: Retain denied without policy.allowRetain; allowed, it keeps the role; expiry revokes a Retain binding"
    );
    cleanup(&cluster, std::slice::from_ref(&denied)).await;
    cluster.wait_gone(&denied, None, SETTLE).await?;
    cleanup(&cluster, &strict_docs).await;
    cleanup(&cluster, &lenient_docs).await;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}
