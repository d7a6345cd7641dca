//! The audit trail end to end, MongoDB: a churn of bindings on the real
//! apiserver (create, union growth, an update, a delete, an expiry) leaves
//! exactly one audit record per write the double saw, in order, each
//! naming the binding that caused it as the apiserver knows it, with no
//! secret; and an `AccessChanged` Event on the binding lists its writes.
//! (The Cosmos DB trail is checked the same way in `cosmos.rs`.)

use std::time::Duration;

use anyhow::Result;
use dbgrant_harness::cluster::FIELD_MANAGER;
use serde_json::json;

use crate::common::{
    MONGO_ADMIN, SETTLE, cleanup, in_ns, mongo_binding, mongo_double, mongo_target, operator, operator_lock, setup,
};

const G1: &str = "8e3f4051-6273-4d84-9e95-afb60c71d829";
const G2: &str = "9f405162-7384-4e95-8fa6-b0c71d82e93a";
const G3: &str = "a0516273-8495-4fa6-90b7-c1d82e93f4ab";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mongodb_write_has_one_audit_record_naming_its_binding() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("audit-mongo").await?;
    let double = mongo_double().await?;
    let target_name = "audit-e2e-mongo";
    let target = mongo_target(target_name, &double.uri(), &[&ns.name], &cluster.operator_namespace);
    let mut op = operator(&cluster, "audit-mongo", Duration::from_secs(300), &mut dump).await?;
    cluster.apply_all(&cluster.admin, &target, None).await?;
    cluster.wait_condition(&target[2], None, "Ready", "True", Some("Connected"), SETTLE).await?;

    // Churn: three bindings (two share G1), then an update, a delete and an
    // expiry.
    let b1 = in_ns(mongo_binding("readers", target_name, G1, &[("read", "orders")]), &ns.name);
    let mut b2 = in_ns(mongo_binding("auditors", target_name, G1, &[]), &ns.name);
    b2["spec"]["subjects"] = json!([{"kind": "Group", "objectId": G1}, {"kind": "Group", "objectId": G2}]);
    b2["spec"]["privileges"] = json!([{"resource": {"db": "orders", "collection": "audit"}, "actions": ["find"]}]);
    let mut b3 = in_ns(mongo_binding("contractor", target_name, G3, &[("read", "orders")]), &ns.name);
    b3["spec"]["expiresAt"] = json!((jiff::Timestamp::now() + jiff::SignedDuration::from_secs(4)).to_string());
    cluster.apply_all(&cluster.admin, &[b1.clone(), b2.clone(), b3.clone()], None).await?;
    for b in [&b1, &b2] {
        cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    }
    b2["spec"]["subjects"] = json!([{"kind": "Group", "objectId": G2}]);
    cluster.apply(&cluster.admin, &b2, None).await?;
    cluster.delete(&cluster.admin, &b1, None).await?;
    cluster.wait_gone(&b1, None, SETTLE).await?;
    cluster.wait_condition(&b3, None, "Ready", "False", Some("Expired"), SETTLE).await?;
    cluster.wait_condition(&b2, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    assert!(double.role(&format!("entra/{G1}"), "admin").is_none(), "G1 lost both its bindings");

    let records = op.audit_records()?;
    let audit_text = std::fs::read_to_string(&op.audit_log)?;
    assert!(!audit_text.contains(MONGO_ADMIN.1), "the audit trail must never carry a credential");
    let login = format!("{}@admin", MONGO_ADMIN.0);
    const WRITES: [&str; 6] = ["createRole", "updateRole", "dropRole", "createUser", "updateUser", "dropUser"];
    let server: Vec<(String, String)> = double
        .user_management_log()
        .into_iter()
        .filter(|c| WRITES.contains(&c.name.as_str()) && c.user.as_deref() == Some(login.as_str()))
        .map(|c| (c.name.clone(), format!("{}.{}", c.db, c.body.get_str(&c.name).unwrap_or_default())))
        .collect();
    let ours: Vec<&serde_json::Value> = records.iter().filter(|r| r["target"] == target_name).collect();
    let audited: Vec<(String, String)> = ours
        .iter()
        .map(|r| (r["operation"].as_str().unwrap().to_string(), r["object"]["name"].as_str().unwrap().to_string()))
        .collect();
    assert!(server.len() >= 5, "the churn wrote: {server:?}");
    assert_eq!(audited, server, "no write without a record, no record without a write");

    // Each record names the binding that caused it as the apiserver knows
    // it: uid, generation, resourceVersion and who manages its spec.
    for r in &ours {
        let t = &r["trigger"];
        assert_eq!(r["outcome"], "applied", "{r}");
        if t["kind"] != "MongoRoleBinding" {
            continue;
        }
        let live = cluster.get(&cluster.admin, &json!({"apiVersion": "dbgrant.io/v1alpha1", "kind": "MongoRoleBinding", "metadata": {"name": t["name"], "namespace": t["namespace"]}}), None).await?;
        if let Some(live) = live {
            assert_eq!(t["uid"].as_str(), live.metadata.uid.as_deref(), "{r}");
        }
        assert!(t["uid"].as_str().is_some_and(|u| !u.is_empty()), "{r}");
        assert!(t["resourceVersion"].as_str().is_some_and(|v| !v.is_empty()), "{r}");
        assert!(t["generation"].as_i64().is_some(), "{r}");
        assert_eq!(t["fieldManagers"], json!([FIELD_MANAGER]), "{r}");
    }
    // Revocations say what was taken away: the delete of `readers` (last
    // on G1 once `auditors` moved to G2) and the expiry of `contractor`.
    let dropped = |binding: &str, deleting: bool| {
        ours.iter().any(|r| {
            r["trigger"]["name"] == binding
                && r["trigger"]["deleting"] == deleting
                && r["operation"] == "dropRole"
                && r["before"]["roles"][0]["role"] == "read"
                && r["after"].is_null()
        })
    };
    assert!(dropped("readers", true), "{ours:#?}");
    assert!(dropped("contractor", false), "{ours:#?}");

    // The binding's Events list its writes.
    let events = cluster.events(&ns.name).await?;
    assert!(
        events.iter().any(|(t, reason, note)| t == "Normal"
            && reason == "AccessChanged"
            && note.contains(&format!("role admin.entra/{G3}"))),
        "{events:#?}"
    );
    // Every change gets its own Event, even seconds after the last one on
    // the same binding: `contractor`'s expiry is not folded into the Event
    // of its grant (an events.k8s.io series keeps the first note only).
    assert!(
        events.iter().any(|(t, reason, note)| t == "Normal"
            && reason == "AccessChanged"
            && note.contains(&format!("deleted role admin.entra/{G3}"))),
        "{events:#?}"
    );

    for b in [&b2, &b3] {
        cluster.delete(&cluster.admin, b, None).await?;
        cluster.wait_gone(b, None, SETTLE).await?;
    }
    cleanup(&cluster, &target).await;
    cluster.wait_gone(&target[2], None, SETTLE).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}
