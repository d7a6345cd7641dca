//! `dbgrant plan` end to end: the plan printed before a change is applied
//! is what the operator then does, on the real apiserver and the MongoDB
//! double — the same roles with the same grants, one write per planned
//! change, and on each binding the verdict the plan announced.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, Result};
use dbgrant_doubles::mongo::{MongoDouble, Resource};
use serde_json::{Value, json};

use crate::common::{
    SETTLE, cleanup, in_ns, mongo_binding, mongo_double, mongo_target, operator, operator_lock, setup,
};

const G1: &str = "5b0c1d2e-3f40-4a51-8b62-7c83d94ea5f6";
const G2: &str = "6c1d2e3f-4051-4b62-8c73-8d94ea5fb607";
const G3: &str = "7d2e3f40-5162-4c73-8d84-9ea5fb60c718";
const G4: &str = "8e3f4051-6273-4d84-9e95-afb60c71d8f9";

/// The double's roles named `entra/…` in admin, each as the plan's detail
/// lines: `role r@db` and `privilege a on db.coll`, one action per line.
fn roles_as_lines(double: &MongoDouble) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for r in double.roles().into_iter().filter(|r| r.name.db == "admin" && r.name.role.starts_with("entra/")) {
        let mut lines: BTreeSet<String> = r.roles.iter().map(|n| format!("role {}@{}", n.role, n.db)).collect();
        for p in &r.privileges {
            let on = match &p.resource {
                Resource::Namespace { db, collection } => {
                    let star = |s: &str| if s.is_empty() { "*".to_string() } else { s.to_string() };
                    format!("{}.{}", star(db), star(collection))
                }
                _ => "the cluster".to_string(),
            };
            lines.extend(p.actions.iter().map(|a| format!("privilege {a} on {on}")));
        }
        out.insert(format!("admin.{}", r.name.role), lines);
    }
    out
}

/// `privilege find, insert on x.y` as one line per action.
fn detail_lines(what: &str) -> Vec<String> {
    match what.strip_prefix("privilege ").and_then(|rest| rest.split_once(" on ")) {
        Some((actions, on)) => actions.split(", ").map(|a| format!("privilege {a} on {on}")).collect(),
        None => vec![what.to_string()],
    }
}

/// Run `dbgrant plan` against the cluster; its exit code and JSON report.
fn plan(kubeconfig: &std::path::Path, dir: &std::path::Path) -> Result<(i32, Value)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbgrant"))
        .args(["plan", "-o", "json", "--kubeconfig"])
        .arg(kubeconfig)
        .arg("-f")
        .arg(dir)
        .output()
        .context("running dbgrant plan")?;
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("plan output is not JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok((out.status.code().unwrap_or(-1), report))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_printed_before_a_change_is_what_the_operator_does() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("plan-e2e").await?;
    let double = mongo_double().await?;
    let target_name = "plan-e2e-mongo";
    let target = mongo_target(target_name, &double.uri(), &[&ns.name], &cluster.operator_namespace);
    let mut op = operator(&cluster, "plan-e2e", Duration::from_secs(300), &mut dump).await?;

    // The state before the change: G1 reads orders, G2 reads orders-eu.
    let readers = in_ns(mongo_binding("readers", target_name, G1, &[("read", "orders")]), &ns.name);
    let eu = in_ns(mongo_binding("eu-readers", target_name, G2, &[("read", "orders-eu")]), &ns.name);
    cluster.apply_all(&cluster.admin, &target, None).await?;
    cluster.apply_all(&cluster.admin, &[readers.clone(), eu.clone()], None).await?;
    for b in [&readers, &eu] {
        cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    }

    // The change: G1's union grows by a second binding with a privilege,
    // G2's binding moves to G3 (G2's role goes, G3's comes), and one
    // binding asks for what the policy refuses.
    let mut audit = in_ns(mongo_binding("audit", target_name, G1, &[]), &ns.name);
    audit["spec"]["privileges"] =
        json!([{"resource": {"db": "orders", "collection": "audit"}, "actions": ["find", "insert"]}]);
    let mut moved = eu.clone();
    moved["spec"]["subjects"] = json!([{"kind": "Group", "objectId": G3}]);
    let denied = in_ns(mongo_binding("wants-root", target_name, G1, &[("root", "admin")]), &ns.name);
    let change = [audit.clone(), moved.clone(), denied.clone()];
    let dir = tempfile_dir(&ns.name)?;
    let text: Vec<String> = change.iter().map(|d| serde_yaml::to_string(d).unwrap()).collect();
    std::fs::write(dir.join("change.yaml"), text.join("---\n"))?;

    let (code, report) = plan(&cluster.admin_kubeconfig, &dir)?;
    assert_eq!(code, 3, "a refused binding makes the exit code 3: {report:#}");
    assert_eq!(report["baseline"], "cluster");
    let changes: Vec<Value> = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "MongoTarget" && t["name"] == target_name)
        .flat_map(|t| t["changes"].as_array().unwrap().clone())
        .collect();
    assert!(!changes.is_empty(), "{report:#}");

    // Apply the plan to the double's current roles, as the plan says.
    let mut expected = roles_as_lines(&double);
    for c in &changes {
        let name = c["name"].as_str().unwrap().to_string();
        assert_eq!(c["object"], "MongoRole", "this target authorises by group: roles only, no users");
        let lines = expected.entry(name.clone()).or_default();
        for d in c["details"].as_array().unwrap() {
            for line in detail_lines(d["what"].as_str().unwrap()) {
                if d["added"] == true {
                    lines.insert(line)
                } else {
                    lines.remove(&line)
                };
            }
        }
        if c["action"] == "Delete" {
            expected.remove(&name);
        }
    }
    let writes_before = ["createRole", "updateRole", "dropRole"].map(|c| double.commands_named(c).len());

    cluster.apply_all(&cluster.admin, &change, None).await?;
    for b in [&audit, &moved] {
        cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    }
    let refused = cluster.wait_condition(&denied, None, "Ready", "False", Some("GrantDenied"), SETTLE).await?;

    // The same roles with the same grants...
    assert_eq!(roles_as_lines(&double), expected, "the operator did what the plan said");
    // ...one write per planned change, no more...
    let writes_after = ["createRole", "updateRole", "dropRole"].map(|c| double.commands_named(c).len());
    let per_action = |a: &str| changes.iter().filter(|c| c["action"] == a).count();
    assert_eq!(
        [writes_after[0] - writes_before[0], writes_after[1] - writes_before[1], writes_after[2] - writes_before[2]],
        [per_action("Create"), per_action("Update"), per_action("Delete")],
        "createRole, updateRole, dropRole against the plan's create, update, delete"
    );
    // ...and the refusal the plan announced, word for word.
    let verdict = report["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["binding"] == format!("MongoRoleBinding/{}/wants-root", ns.name))
        .expect("the refused binding is in the plan");
    assert_eq!(verdict["reason"], "GrantDenied");
    assert_eq!(verdict["message"].as_str().unwrap(), crate::common::ready_message(&refused));

    // The access report, read from the cluster, is what the server holds.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbgrant"))
        .args(["access", "-o", "json", "--target", target_name, "--kubeconfig"])
        .arg(&cluster.admin_kubeconfig)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    let reported: BTreeMap<String, BTreeSet<String>> = rows
        .iter()
        .map(|r| {
            let grants = r["grants"].as_array().unwrap().iter().flat_map(|g| {
                let g = g.as_str().unwrap();
                if g.contains(" on ") { detail_lines(&format!("privilege {g}")) } else { vec![format!("role {g}")] }
            });
            (r["object"].as_str().unwrap().to_string(), grants.collect())
        })
        .collect();
    assert_eq!(reported, roles_as_lines(&double), "dbgrant access says what the server holds");
    let g1_row = rows.iter().find(|r| r["subject"] == G1).expect("G1's row");
    assert_eq!(g1_row["bindings"], json!([format!("{}/audit", ns.name), format!("{}/readers", ns.name)]));

    // Applied, the same manifests plan to nothing: no change, and the
    // refusal is the cluster's already, not this change's.
    let (code, again) = plan(&cluster.admin_kubeconfig, &dir)?;
    assert_eq!(code, 0, "{again:#}");
    assert!(
        again["targets"].as_array().unwrap().iter().all(|t| t["name"] != target_name),
        "nothing left to do on the target: {again:#}"
    );

    // --backend: the live state. G3's role is dropped out of band (drift the
    // operator would restore) and a role with dbgrant's name for G4 is
    // made by hand (foreign: a new binding for G4 would conflict). The
    // plan reads the target's Secrets as the operator does, writes nothing.
    double.remove_role(&format!("entra/{G3}"), "admin");
    double.insert_role(dbgrant_doubles::mongo::Role::new(format!("entra/{G4}"), "admin").with_role("read", "orders"));
    let g4 = in_ns(mongo_binding("g4-readers", target_name, G4, &[("read", "orders")]), &ns.name);
    std::fs::write(dir.join("change.yaml"), serde_yaml::to_string(&g4)?)?;
    let writes_before = double.log().iter().filter(|c| c.is_write).count();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbgrant"))
        .args(["plan", "-o", "json", "--backend", "--operator-namespace", &cluster.operator_namespace, "--kubeconfig"])
        .arg(&cluster.admin_kubeconfig)
        .arg("-f")
        .arg(&dir)
        .output()?;
    let live: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("{e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    let ours =
        live["backend"].as_array().unwrap().iter().find(|t| t["name"] == target_name).expect("the target's live view");
    assert!(ours["error"].is_null(), "{ours:#}");
    let writes: Vec<&str> = ours["writes"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(
        writes.iter().any(|w| w.starts_with(&format!("create role admin.entra/{G3} with read@orders-eu"))),
        "the dropped role would be restored: {ours:#}"
    );
    assert!(ours["drifted"].as_array().unwrap().iter().any(|d| d.as_str().unwrap().contains(G3)), "{ours:#}");
    assert!(ours["foreign"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().contains(G4)), "{ours:#}");
    assert!(!writes.iter().any(|w| w.contains(G4)), "a foreign role is never written: {ours:#}");
    assert_eq!(out.status.code(), Some(2), "live writes pending: {ours:#}");
    assert_eq!(double.log().iter().filter(|c| c.is_write).count(), writes_before, "--backend writes nothing");
    // dbgrant access --backend flags the same: G3's drift, G4's foreign role.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbgrant"))
        .args(["access", "-o", "json", "--backend", "--target", target_name])
        .args(["--operator-namespace", &cluster.operator_namespace, "--kubeconfig"])
        .arg(&cluster.admin_kubeconfig)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    let g3 = rows.iter().find(|r| r["subject"] == G3).expect("G3's row");
    assert!(g3["flag"].as_str().is_some_and(|f| f.starts_with("drifted")), "{rows:#?}");
    assert!(
        rows.iter().any(|r| r["object"].as_str().is_some_and(|o| o.contains(G4))
            && r["flag"].as_str().is_some_and(|f| f.starts_with("foreign"))),
        "{rows:#?}"
    );
    assert!(rows.iter().filter(|r| r["subject"] == G1).all(|r| r["flag"].is_null()), "{rows:#?}");
    double.remove_role(&format!("entra/{G4}"), "admin");

    for b in [&readers, &audit, &moved, &denied] {
        cluster.delete(&cluster.admin, b, None).await?;
        cluster.wait_gone(b, None, SETTLE).await?;
    }
    cleanup(&cluster, &target).await;
    cluster.wait_gone(&target[2], None, SETTLE).await?;
    op.stop(Duration::from_secs(10)).await?;
    let _ = std::fs::remove_dir_all(&dir);
    dump.passed();
    Ok(())
}

fn tempfile_dir(label: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("dbgrant-plan-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
