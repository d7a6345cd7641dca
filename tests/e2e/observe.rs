//! Observe mode end to end: a MongoTarget with `spec.mode: Observe` writes
//! nothing to the double while its status and its bindings' conditions list
//! what it would write; switching it to Enforce writes exactly that.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use crate::common::{
    MONGO_ADMIN, SETTLE, cleanup, in_ns, mongo_binding, mongo_double, mongo_target, operator, operator_lock, setup,
};

const G1: &str = "b1627384-95a6-4b07-81c8-d2e93f40a5bc";
const G2: &str = "c2738495-a6b7-4c18-92d9-e3f40a51b6cd";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observe_target_writes_nothing_and_enforcing_applies_its_plan() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("observe").await?;
    let double = mongo_double().await?;
    let target_name = "observe-e2e-mongo";
    let mut target = mongo_target(target_name, &double.uri(), &[&ns.name], &cluster.operator_namespace);
    target[2]["spec"]["mode"] = json!("Observe");
    let mut op = operator(&cluster, "observe", Duration::from_secs(2), &mut dump).await?;
    let readers = in_ns(mongo_binding("readers", target_name, G1, &[("read", "orders")]), &ns.name);
    let writers = in_ns(mongo_binding("writers", target_name, G2, &[("readWrite", "orders")]), &ns.name);
    cluster.apply_all(&cluster.admin, &target, None).await?;
    cluster.apply_all(&cluster.admin, &[readers.clone(), writers.clone()], None).await?;

    for (b, group, role) in [(&readers, G1, "read@orders"), (&writers, G2, "readWrite@orders")] {
        let o = cluster.wait_condition(b, None, "Ready", "False", Some("Observing"), SETTLE).await?;
        let message = crate::common::ready_message(&o);
        assert!(
            message.contains(&format!("would create role admin.entra/{group} with {role}")),
            "the binding says what would be written: {message}"
        );
    }
    // The target's resync lists the plan (and keeps listing it).
    let t = wait_pending(&cluster, &target[2], 2).await?;
    let pending: Vec<String> = serde_json::from_value(t["status"]["pending"]["changes"].clone()).unwrap_or_default();
    assert_eq!(t["status"]["pending"]["writes"], 2, "{t:#}");
    assert!(pending.iter().any(|p| p.contains(G1)) && pending.iter().any(|p| p.contains(G2)), "{pending:?}");
    let conditions = t["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let ready = conditions.iter().find(|c| c["type"] == "Ready");
    assert_eq!(ready.map(|c| c["reason"].clone()), Some(json!("Observing")), "{t:#}");

    // Nothing written by the operator: no role, no user, no ledger entry.
    let login = format!("{}@admin", MONGO_ADMIN.0);
    let writes: Vec<String> = double
        .log()
        .into_iter()
        .filter(|c| c.is_write && c.user.as_deref() == Some(login.as_str()))
        .map(|c| c.name)
        .collect();
    assert!(writes.is_empty(), "an Observe target wrote: {writes:?}");
    assert!(double.roles().iter().all(|r| !r.name.role.starts_with("entra/")));
    assert!(op.audit_records()?.iter().all(|r| r["target"] != target_name), "no audit record without a write");

    // Enforce: exactly the planned writes are made.
    target[2]["spec"]["mode"] = json!("Enforce");
    cluster.apply(&cluster.admin, &target[2], None).await?;
    for b in [&readers, &writers] {
        cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    }
    cluster.wait_condition(&target[2], None, "Ready", "True", Some("Connected"), SETTLE).await?;
    let mut written: Vec<String> = op
        .audit_records()?
        .iter()
        .filter(|r| r["target"] == target_name)
        .map(|r| {
            format!(
                "{} {}",
                r["operation"].as_str().unwrap_or_default(),
                r["object"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let mut planned: Vec<String> = pending
        .iter()
        .map(|p| {
            let w: Vec<&str> = p.split(' ').collect();
            format!("{}{} {}", w[0], capitalise(w[1]), w[2])
        })
        .collect();
    written.sort();
    planned.sort();
    assert_eq!(written, planned, "enforcing wrote exactly the observed plan");
    assert!(double.role(&format!("entra/{G1}"), "admin").is_some());

    for b in [&readers, &writers] {
        cluster.delete(&cluster.admin, b, None).await?;
        cluster.wait_gone(b, None, SETTLE).await?;
    }
    cleanup(&cluster, &target).await;
    cluster.wait_gone(&target[2], None, SETTLE).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

/// `role` as in `createRole`.
fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// The target once its status lists `writes` pending writes.
async fn wait_pending(cluster: &dbgrant_harness::Cluster, target: &Value, writes: u64) -> Result<Value> {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        if let Some(o) = cluster.get(&cluster.admin, target, None).await?
            && o.data["status"]["pending"]["writes"].as_u64() == Some(writes)
        {
            return Ok(o.data);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the target never listed {writes} pending writes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
