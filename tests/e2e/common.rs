//! Shared set-up for the end-to-end tests.

use std::time::Duration;

use anyhow::Result;
use dbgrant_doubles::mongo::MongoDouble;
use dbgrant_harness::{Cluster, DumpOnFailure, Operator, TestNamespace, operator::Options};
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};

/// How long a reconcile is given to show up on status.
pub const SETTLE: Duration = Duration::from_secs(30);

/// The SCRAM identity the operator uses on the MongoDB double.
pub const MONGO_ADMIN: (&str, &str) = ("dbgrant-operator", "e2e-Pa55word");

/// Serialises the tests that run an operator process.
pub async fn operator_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// The shared cluster, a fresh namespace, and a dump guard for both.
pub async fn setup(label: &str) -> Result<(Cluster, TestNamespace, DumpOnFailure)> {
    let cluster = Cluster::shared().await?;
    let ns = cluster.namespace(label).await?;
    let dump = DumpOnFailure::new(&cluster, &[&ns.name]);
    Ok((cluster, ns, dump))
}

/// Start the operator binary built by cargo for this test run.
pub async fn operator(cluster: &Cluster, label: &str, resync: Duration, dump: &mut DumpOnFailure) -> Result<Operator> {
    let mut options = Options::new(env!("CARGO_BIN_EXE_dbgrant"), label);
    options.resync = resync;
    let op = Operator::start(cluster, options).await?;
    dump.log(op.log.clone());
    Ok(op)
}

/// A MongoDB double with the operator's SCRAM user.
pub async fn mongo_double() -> Result<MongoDouble> {
    MongoDouble::start_with_admin(MONGO_ADMIN.0, MONGO_ADMIN.1).await
}

/// The Secrets and MongoTarget for `name`, pointing at `uri` with the
/// double's admin credentials, shaped like `deploy/examples/mongo-target.yaml`.
pub fn mongo_target(name: &str, uri: &str, allowed_namespaces: &[&str], operator_ns: &str) -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("{name}-connection"), "namespace": operator_ns},
            "stringData": {"uri": uri}
        }),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("{name}-scram"), "namespace": operator_ns},
            "stringData": {"username": MONGO_ADMIN.0, "password": MONGO_ADMIN.1}
        }),
        json!({
            "apiVersion": "dbgrant.io/v1alpha1", "kind": "MongoTarget",
            "metadata": {"name": name},
            "spec": {
                "connection": {"uriSecretRef": {"name": format!("{name}-connection"), "key": "uri"}},
                "auth": {"scram": {
                    "usernameSecretRef": {"name": format!("{name}-scram"), "key": "username"},
                    "passwordSecretRef": {"name": format!("{name}-scram"), "key": "password"}
                }},
                "oidc": {"authNamePrefix": "entra", "useAuthorizationClaim": true, "authorizationClaim": "groups"},
                "policy": {"allowedNamespaces": allowed_namespaces, "allowedDatabases": ["orders", "orders-*"]}
            }
        }),
    ]
}

/// A MongoRoleBinding granting `roles` (role, db) to one group.
pub fn mongo_binding(name: &str, target: &str, group: &str, roles: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "dbgrant.io/v1alpha1", "kind": "MongoRoleBinding",
        "metadata": {"name": name},
        "spec": {
            "targetRef": {"name": target},
            "subjects": [{"kind": "Group", "objectId": group}],
            "roles": roles.iter().map(|(r, d)| json!({"role": r, "db": d})).collect::<Vec<_>>()
        }
    })
}

/// The same manifest with `metadata.namespace` set.
pub fn in_ns(mut doc: Value, ns: &str) -> Value {
    doc["metadata"]["namespace"] = json!(ns);
    doc
}

/// Delete cluster-scoped objects a test created, so later tests' operators
/// do not keep reconciling them.
pub async fn cleanup(cluster: &Cluster, docs: &[Value]) {
    for d in docs {
        let _ = cluster.delete(&cluster.admin, d, None).await;
    }
}

/// The message of an object's Ready condition.
pub fn ready_message(o: &kube::api::DynamicObject) -> String {
    dbgrant_harness::cluster::condition(o, "Ready").and_then(|c| c["message"].as_str()).unwrap_or_default().to_string()
}
