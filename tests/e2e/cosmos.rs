//! Azure Cosmos DB end to end: the real apiserver, the operator process as
//! the chart's identity signing in to the ARM + Entra double over real HTTPS
//! with the real `azure_identity` credentials (workload identity from a
//! federated token file, client secret), trusting the double's CA from a
//! Secret named by `spec.cloud.caSecretRef`.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Result, bail};
use dbgrant_doubles::arm::{
    AccountRef, ArmAccess, DATA_CONTRIBUTOR_ID, DATA_READER_ID, Fault, FaultTarget, Principal, RequestKind,
    RoleAssignment, new_guid,
};
use dbgrant_harness::{
    Cluster, DumpOnFailure, Operator,
    examples::{CosmosDouble, GrantRow},
    manifests,
    operator::{Options, metric_sum},
};
use kube::api::DynamicObject;
use serde_json::{Value, json};

use crate::common::{cleanup, in_ns, operator_lock, ready_message, setup};

/// How long a Cosmos reconcile is given to show up on status: writes are
/// long-running operations polled to completion, one account at a time.
const SETTLE: Duration = Duration::from_secs(60);

/// Groups for the tests' own bindings (registered in the double's
/// directory by each test).
pub(crate) const READERS: &str = "2f0c5a4e-8f51-4c1e-9b6e-0d3a4c2b1a01";
const WRITERS: &str = "6d1e7b3c-2a94-4f08-8c5d-1e2f3a4b5c02";

/// The ARM + Entra double set up for the examples (tenant, workload
/// identity application federated with the operator's identity, the example
/// account and subjects), with its CA Secret in the operator's namespace.
pub(crate) async fn arm_double(cluster: &Cluster) -> Result<CosmosDouble> {
    let cosmos = CosmosDouble::start(&cluster.operator_user).await?;
    cluster.apply(&cluster.admin, &cosmos.ca_secret(&cluster.operator_namespace), None).await?;
    Ok(cosmos)
}

/// Start the operator with the environment the Cosmos credentials need.
pub(crate) async fn operator(
    cluster: &Cluster,
    cosmos: &CosmosDouble,
    label: &str,
    resync: Duration,
    dump: &mut DumpOnFailure,
) -> Result<Operator> {
    let mut options = Options::new(env!("CARGO_BIN_EXE_dbgrant"), label);
    options.resync = resync;
    options.env = cosmos.operator_env();
    let op = Operator::start(cluster, options).await?;
    dump.log(op.log.clone());
    Ok(op)
}

/// A per-test suffix from the test namespace's name.
pub(crate) fn suffix(ns: &str) -> String {
    ns.rsplit('-').next().unwrap_or("0").to_string()
}

/// A fresh account in the double (one CosmosTarget per account), plus the
/// tests' groups in its directory.
pub(crate) fn new_account(cosmos: &CosmosDouble, name: &str) -> AccountRef {
    let account = AccountRef::new(&cosmos.examples.account.subscription_id, "rg-dbgrant-e2e", name);
    cosmos.double.add_account(dbgrant_doubles::arm::Account::new(account.clone(), "westus"));
    for g in [READERS, WRITERS] {
        cosmos.double.add_principal(Principal::group(g).named(format!("sg-{}", &g[..8])));
    }
    account
}

/// The example's workload identity credential.
pub(crate) fn workload_identity(cosmos: &CosmosDouble) -> Value {
    json!({"workloadIdentity": {"tenantId": cosmos.examples.tenant_id, "clientId": cosmos.examples.client_id}})
}

/// A CosmosTarget on `account` through the double, shaped like
/// `deploy/examples/cosmos-target.yaml`.
pub(crate) fn cosmos_target(name: &str, cosmos: &CosmosDouble, account: &AccountRef, credential: Value) -> Value {
    json!({
        "apiVersion": "dbgrant.io/v1alpha1", "kind": "CosmosTarget",
        "metadata": {"name": name},
        "spec": {
            "subscriptionId": account.subscription_id,
            "resourceGroup": account.resource_group,
            "accountName": account.name,
            "cloud": cosmos.cloud(),
            "credential": credential,
            "policy": {"allowedNamespaces": ["e2e-*"], "allowedDatabases": ["orders", "catalog"]}
        }
    })
}

/// A CosmosRoleBinding of `role` (`{"builtIn": ..}` or `{"name": ..}`) for
/// one group at `scopes`.
pub(crate) fn cosmos_binding(name: &str, target: &str, group: &str, role: Value, scopes: Value) -> Value {
    json!({
        "apiVersion": "dbgrant.io/v1alpha1", "kind": "CosmosRoleBinding",
        "metadata": {"name": name},
        "spec": {
            "targetRef": {"name": target},
            "subjects": [{"kind": "Group", "objectId": group}],
            "roleDefinition": role,
            "scopes": scopes
        }
    })
}

/// The binding's status.assignments as (name, principal, scope, ownership).
fn status_assignments(o: &DynamicObject) -> Vec<(String, String, String, String)> {
    let mut out: Vec<(String, String, String, String)> = o.data["status"]["assignments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
            (s("name"), s("principalId").to_ascii_lowercase(), s("scope"), s("ownership"))
        })
        .collect();
    out.sort();
    out
}

/// (principal, role definition name, relative scope) of every assignment.
fn grant_keys(grants: &[GrantRow]) -> BTreeSet<(String, String, String)> {
    grants.iter().map(|g| (g.principal_id.clone(), g.role_definition.to_ascii_lowercase(), g.scope.clone())).collect()
}

/// The target's `status.lastResyncTime`.
async fn last_resync(cluster: &Cluster, target: &Value) -> Result<Option<String>> {
    let o = cluster.get(&cluster.admin, target, None).await?;
    Ok(o.and_then(|o| o.data["status"]["lastResyncTime"].as_str().map(str::to_string)))
}

/// Wait until the target has finished `n` more full resyncs.
async fn resyncs(cluster: &Cluster, target: &Value, n: usize, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = last_resync(cluster, target).await?;
    let mut seen = 0;
    while seen < n {
        if std::time::Instant::now() >= deadline {
            bail!("{} resync(s) of {} not seen after {timeout:?}", n - seen, manifests::name(target));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = last_resync(cluster, target).await?;
        if now.is_some() && now != last {
            seen += 1;
            last = now;
        }
    }
    Ok(())
}

/// Delete what a test created at the top level and wait until its targets
/// are gone: a deleted target waits for every binding and role definition
/// that uses it, so this also shows nothing was left holding it.
async fn delete_targets(cluster: &Cluster, docs: &[Value]) -> Result<()> {
    cleanup(cluster, docs).await;
    for d in docs.iter().filter(|d| manifests::kind(d).ends_with("Target")) {
        cluster.wait_gone(d, None, SETTLE).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosmos_examples_become_ready_and_assign_roles_in_azure() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, _ns, mut dump) = setup("cosmos-examples").await?;
    let cosmos = arm_double(&cluster).await?;
    let ex = cosmos.examples.clone();
    let mut target = manifests::example("cosmos-target.yaml")?;
    cosmos.point_examples(&mut target);
    let definition = manifests::example("cosmos-roledefinition.yaml")?;
    let bindings = manifests::example("cosmos-rolebindings.yaml")?;
    let mut op = operator(&cluster, &cosmos, "cosmos-examples", Duration::from_secs(300), &mut dump).await?;
    let mut dump2 = DumpOnFailure::new(&cluster, &["team-catalog"]);
    dump2.log(op.log.clone());

    cluster.apply_all(&cluster.admin, &target, None).await?;
    cluster.apply_all(&cluster.admin, &definition, None).await?;
    cluster.apply_all(&cluster.admin, &bindings, None).await?;
    let t = target.iter().find(|d| manifests::kind(d) == "CosmosTarget").expect("example CosmosTarget");
    let tgt = cluster.wait_condition(t, None, "Ready", "True", Some("Connected"), SETTLE).await?;
    let account_id = tgt.data["status"]["accountId"].as_str().unwrap_or_default();
    assert!(account_id.eq_ignore_ascii_case(&ex.account.id()), "status.accountId {account_id}");
    let d = &definition[0];
    let def = cluster.wait_condition(d, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    let cosmos_bindings: Vec<&Value> = bindings.iter().filter(|b| manifests::kind(b) == "CosmosRoleBinding").collect();
    let mut bound = Vec::new();
    for b in &cosmos_bindings {
        bound.push(cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), SETTLE).await?);
    }

    // The custom definition, as written in the example.
    let defs = cosmos.custom_definitions(&ex.account);
    assert_eq!(defs.len(), 1, "exactly one custom role definition: {defs:?}");
    assert_eq!(defs[0].role_name, d["spec"]["roleName"].as_str().unwrap_or_default());
    let want_actions: BTreeSet<&str> =
        d["spec"]["dataActions"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let got_actions: BTreeSet<&str> = defs[0].data_actions.iter().map(String::as_str).collect();
    assert_eq!(got_actions, want_actions, "data actions");
    assert_eq!(defs[0].assignable_scopes, ["/dbs/catalog"], "assignable scopes");
    let def_id = def.data["status"]["roleDefinitionId"].as_str().unwrap_or_default();
    assert!(def_id.to_ascii_lowercase().ends_with(&defs[0].name.to_ascii_lowercase()), "roleDefinitionId {def_id}");

    // One assignment per (principal, definition, scope) the bindings name.
    let mut expected = BTreeSet::new();
    let mut expected_by_binding = Vec::new();
    for b in &cosmos_bindings {
        let role = match (b["spec"]["roleDefinition"]["builtIn"].as_str(), b["spec"]["roleDefinition"]["name"].as_str())
        {
            (Some("DataReader"), _) => DATA_READER_ID.to_string(),
            (Some("DataContributor"), _) => DATA_CONTRIBUTOR_ID.to_string(),
            _ => defs[0].name.to_ascii_lowercase(),
        };
        let mut mine = BTreeSet::new();
        for s in b["spec"]["subjects"].as_array().into_iter().flatten() {
            for scope in b["spec"]["scopes"].as_array().into_iter().flatten() {
                let rel = match (scope["database"].as_str(), scope["container"].as_str()) {
                    (Some(db), Some(c)) => format!("/dbs/{db}/colls/{c}"),
                    (Some(db), None) => format!("/dbs/{db}"),
                    _ => "/".to_string(),
                };
                let principal = s["objectId"].as_str().unwrap_or_default().to_ascii_lowercase();
                mine.insert((principal, role.clone(), rel));
            }
        }
        expected.extend(mine.iter().cloned());
        expected_by_binding.push(mine);
    }
    let grants = cosmos.grants(&ex.account);
    assert_eq!(grants.len(), expected.len(), "one assignment per (principal, definition, scope): {grants:#?}");
    assert_eq!(grant_keys(&grants), expected);
    // Each binding's status names its assignments, all created by dbgrant.
    for (b, mine) in bound.iter().zip(&expected_by_binding) {
        let listed = status_assignments(b);
        assert_eq!(listed.len(), mine.len(), "status.assignments of {:?}", b.metadata.name);
        for (name, principal, scope, ownership) in &listed {
            assert_eq!(ownership, "Managed");
            let g = grants.iter().find(|g| g.assignment.eq_ignore_ascii_case(name)).expect("listed assignment exists");
            assert_eq!(&g.principal_id, principal);
            assert!(g.scope == *scope || (g.scope == "/" && scope.is_empty()), "scope {scope} vs {}", g.scope);
        }
    }
    // Nothing was drift: the target's first resync (it turned Ready after
    // the bindings were indexed) made their first writes, which is applying,
    // not restoring.
    let metrics = op.metrics().await?;
    assert_eq!(
        metric_sum(&metrics, "dbgrant_drift_corrections_total", &[]),
        0.0,
        "a first application counted as drift:\n{}",
        op.log_tail(40)
    );
    let drift: Vec<String> = cluster
        .events("default")
        .await?
        .into_iter()
        .filter(|(_, reason, note)| {
            reason == "DriftCorrected"
                && (grants.iter().any(|g| note.contains(&g.assignment)) || note.contains(&defs[0].name))
        })
        .map(|(_, _, note)| note)
        .collect();
    assert!(drift.is_empty(), "DriftCorrected on first application: {drift:?}");
    // dbgrant signed in with workload identity, as the example's identity.
    let tokens = cosmos.double.issued_tokens();
    assert!(
        tokens.iter().any(|t| t.grant == "workload_identity" && t.object_id == cosmos.operator_object_id),
        "no workload identity token was issued: {tokens:?}"
    );

    // Deleting a binding deletes its assignment, and only that.
    cluster.delete(&cluster.admin, cosmos_bindings[0], None).await?;
    cluster.wait_gone(cosmos_bindings[0], None, SETTLE).await?;
    let left = grant_keys(&cosmos.grants(&ex.account));
    assert_eq!(left, expected_by_binding[1], "only the deleted binding's assignments may go");

    // The chart's RBAC sufficed, and the federated token never hit the log.
    let log = op.log_text();
    assert!(!log.contains("forbidden") && !log.contains("Forbidden"), "RBAC denials:\n{}", op.log_tail(80));
    let token = std::fs::read_to_string(&cosmos.token_file)?;
    assert!(!log.contains(token.trim()), "the federated token appears in the operator log");

    // The rest: the other binding, then the definition (deleted in Azure
    // after its last assignment), then the target.
    cluster.delete(&cluster.admin, cosmos_bindings[1], None).await?;
    cluster.wait_gone(cosmos_bindings[1], None, SETTLE).await?;
    assert!(cosmos.grants(&ex.account).is_empty(), "assignments left: {:#?}", cosmos.grants(&ex.account));
    cluster.delete(&cluster.admin, d, None).await?;
    cluster.wait_gone(d, None, SETTLE).await?;
    assert!(cosmos.custom_definitions(&ex.account).is_empty(), "the custom definition must be deleted with its object");
    delete_targets(&cluster, &target).await?;
    assert!(op.stop(Duration::from_secs(10)).await?, "operator did not exit cleanly on SIGTERM");
    dump.passed();
    dump2.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_report_not_ready_and_bindings_wait() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("cosmos-cred").await?;
    let cosmos = arm_double(&cluster).await?;
    let n = suffix(&ns.name);
    let opns = cluster.operator_namespace.clone();
    let tenant = cosmos.double.tenant_id();

    // An application that signs in with a client secret; its Secret holds
    // a wrong value first.
    let (app_client, app_object) = (new_guid(), new_guid());
    let good = format!("good~{}", new_guid());
    let wrong = format!("wrong~{}", new_guid());
    cosmos.double.add_principal(
        Principal::application(&app_client, &app_object)
            .named("e2e-secret-app")
            .secret(&good)
            .arm_access(ArmAccess::Write),
    );
    let secret = |value: &str| {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("cosmos-secret-{n}"), "namespace": opns},
            "stringData": {"clientSecret": value}
        })
    };
    let by_secret = |client: &str| {
        json!({"clientSecret": {
            "tenantId": tenant, "clientId": client,
            "secretRef": {"name": format!("cosmos-secret-{n}"), "key": "clientSecret"}
        }})
    };
    let wrong_secret = cosmos_target(
        &format!("cred-secret-{n}"),
        &cosmos,
        &new_account(&cosmos, &format!("e2e-secret-{n}")),
        by_secret(&app_client),
    );
    // Workload identity for an application with no federated credential
    // for the operator's ServiceAccount.
    let unfederated = new_guid();
    cosmos.double.add_principal(
        Principal::application(&unfederated, new_guid()).named("e2e-unfederated").arm_access(ArmAccess::Write),
    );
    let no_federation = cosmos_target(
        &format!("cred-wi-{n}"),
        &cosmos,
        &new_account(&cosmos, &format!("e2e-wi-{n}")),
        json!({"workloadIdentity": {"tenantId": tenant, "clientId": unfederated}}),
    );
    // A valid identity without rights on the account.
    let (reader_client, reader_secret) = (new_guid(), format!("ro~{}", new_guid()));
    cosmos.double.add_principal(
        Principal::application(&reader_client, new_guid()).named("e2e-no-access").secret(&reader_secret),
    );
    let no_access_secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("cosmos-noaccess-{n}"), "namespace": opns},
        "stringData": {"clientSecret": reader_secret}
    });
    let no_access = cosmos_target(
        &format!("cred-noaccess-{n}"),
        &cosmos,
        &new_account(&cosmos, &format!("e2e-noaccess-{n}")),
        json!({"clientSecret": {
            "tenantId": tenant, "clientId": reader_client,
            "secretRef": {"name": format!("cosmos-noaccess-{n}"), "key": "clientSecret"}
        }}),
    );
    let binding = in_ns(
        cosmos_binding(
            "waits",
            manifests::name(&wrong_secret),
            READERS,
            json!({"builtIn": "DataReader"}),
            json!([{"database": "orders"}]),
        ),
        &ns.name,
    );

    let mut op = operator(&cluster, &cosmos, "cosmos-cred", Duration::from_secs(300), &mut dump).await?;
    cluster.apply(&cluster.admin, &secret(&wrong), None).await?;
    cluster.apply(&cluster.admin, &no_access_secret, None).await?;
    let targets = [wrong_secret.clone(), no_federation.clone(), no_access.clone()];
    cluster.apply_all(&cluster.admin, &targets, None).await?;
    cluster.apply(&cluster.admin, &binding, None).await?;

    for t in [&wrong_secret, &no_federation] {
        let o = cluster.wait_condition(t, None, "Ready", "False", Some("CredentialUnavailable"), SETTLE).await?;
        let msg = ready_message(&o);
        assert!(!msg.is_empty(), "{} has no message", manifests::name(t));
        assert!(!msg.contains(&wrong), "the client secret leaked into status: {msg}");
        eprintln!("{}: {msg}", manifests::name(t));
    }
    let o = cluster.wait_condition(&no_access, None, "Ready", "False", Some("Unauthorized"), SETTLE).await?;
    let msg = ready_message(&o);
    assert!(msg.contains("sqlRoleAssignments"), "the message should say which permission is missing: {msg}");
    let b = cluster.wait_condition(&binding, None, "Ready", "False", Some("TargetNotReady"), SETTLE).await?;
    assert!(ready_message(&b).contains(manifests::name(&wrong_secret)), "{}", ready_message(&b));
    let counters = cosmos.double.counters();
    assert_eq!(counters.writes, 0, "nothing may be written without a Ready target");
    let log = op.log_text();
    assert!(!log.contains(&wrong) && !log.contains(&reader_secret), "a client secret appears in the operator log");

    // Fixing the Secret is enough: the target recovers on its next attempt
    // and the waiting binding is applied.
    cluster.apply(&cluster.admin, &secret(&good), None).await?;
    cluster.wait_condition(&wrong_secret, None, "Ready", "True", Some("Connected"), SETTLE).await?;
    cluster.wait_condition(&binding, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    assert!(op.is_running(), "operator crashed:\n{}", op.log_tail(60));

    cleanup(&cluster, std::slice::from_ref(&binding)).await;
    cluster.wait_gone(&binding, None, SETTLE).await?;
    delete_targets(&cluster, &targets).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_assignments_are_never_touched_and_identical_ones_satisfy_bindings() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("cosmos-foreign").await?;
    let cosmos = arm_double(&cluster).await?;
    let n = suffix(&ns.name);
    let account = new_account(&cosmos, &format!("e2e-foreign-{n}"));
    let reader = account.role_definition_id(DATA_READER_ID);
    let contributor = account.role_definition_id(DATA_CONTRIBUTOR_ID);
    // Planted before dbgrant starts: one identical to what `readers` asks
    // for, and one nobody asks for.
    let identical = RoleAssignment::new(new_guid(), &reader, account.database_scope("orders"), READERS);
    let unrelated = RoleAssignment::new(new_guid(), &contributor, account.database_scope("orders"), WRITERS);
    for a in [&identical, &unrelated] {
        cosmos.double.insert_role_assignment(&account, a.clone())?;
    }
    let target = cosmos_target(&format!("foreign-{n}"), &cosmos, &account, workload_identity(&cosmos));
    let tname = manifests::name(&target).to_string();
    let readers = in_ns(
        cosmos_binding("readers", &tname, READERS, json!({"builtIn": "DataReader"}), json!([{"database": "orders"}])),
        &ns.name,
    );
    let writers = in_ns(
        cosmos_binding("writers", &tname, WRITERS, json!({"builtIn": "DataReader"}), json!([{"database": "orders"}])),
        &ns.name,
    );
    let mut op = operator(&cluster, &cosmos, "cosmos-foreign", Duration::from_secs(3), &mut dump).await?;
    cluster.apply(&cluster.admin, &target, None).await?;
    cluster.apply_all(&cluster.admin, &[readers.clone(), writers.clone()], None).await?;
    cluster.wait_condition(&target, None, "Ready", "True", Some("Connected"), SETTLE).await?;
    let r = cluster.wait_condition(&readers, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    let w = cluster.wait_condition(&writers, None, "Ready", "True", Some("Applied"), SETTLE).await?;

    // The identical foreign assignment satisfies `readers` without takeover.
    let listed = status_assignments(&r);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].0.eq_ignore_ascii_case(&identical.name), "readers should point at the foreign assignment");
    assert_eq!(listed[0].3, "PreExisting");
    assert!(ready_message(&r).contains("does not manage"), "status should say so: {}", ready_message(&r));
    // `writers` needed its own (the foreign Contributor one is another role).
    let listed = status_assignments(&w);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].3, "Managed");
    let managed = listed[0].0.clone();
    assert_eq!(cosmos.double.role_assignments(&account).len(), 3, "no duplicate of the identical assignment");

    // Resyncs leave both foreign assignments exactly as planted and never
    // address them.
    resyncs(&cluster, &target, 2, SETTLE).await?;
    for a in [&identical, &unrelated] {
        assert_eq!(cosmos.double.role_assignment(&account, &a.name).as_ref(), Some(a), "foreign assignment changed");
    }
    let tgt = cluster.get(&cluster.admin, &target, None).await?.expect("target");
    assert_eq!(tgt.data["status"]["roleAssignments"], 3);
    assert_eq!(tgt.data["status"]["managedRoleAssignments"], 1);

    // Drift: dbgrant's own assignment deleted out of band comes back under
    // the same name on the next resync; when the identical foreign one
    // goes, dbgrant creates its own so `readers` keeps its access.
    cosmos.double.remove_role_assignment(&account, &managed).expect("managed assignment");
    let gone = cosmos.double.remove_role_assignment(&account, &identical.name).expect("identical assignment");
    resyncs(&cluster, &target, 2, SETTLE).await?;
    assert!(cosmos.double.role_assignment(&account, &managed).is_some(), "drift not corrected");
    let now = cosmos.double.role_assignments(&account);
    assert_eq!(now.len(), 3, "{now:#?}");
    let replacement = now
        .iter()
        .find(|a| a.principal_id.eq_ignore_ascii_case(READERS) && a.role_definition_id.eq_ignore_ascii_case(&reader))
        .expect("readers' access restored by dbgrant")
        .name
        .clone();
    // `readers`' status follows: its access now comes from dbgrant's own
    // assignment, not the foreign one that is gone.
    cluster
        .wait_for(&cluster.admin, &readers, SETTLE, "granted by dbgrant's own assignment", |o| {
            let listed = status_assignments(o);
            listed.len() == 1
                && listed[0].0.eq_ignore_ascii_case(&replacement)
                && listed[0].3 == "Managed"
                && !ready_message(o).contains("does not manage")
        })
        .await?;
    // Only restoring what dbgrant had in place is drift: its deleted
    // assignment, not the replacement for the foreign one.
    let drift: Vec<String> = cluster
        .events("default")
        .await?
        .into_iter()
        .filter(|(_, reason, _)| reason == "DriftCorrected")
        .map(|(_, _, note)| note)
        .collect();
    assert!(drift.iter().any(|n| n.contains(&managed)), "no DriftCorrected event for {managed}: {drift:?}");
    assert!(!drift.iter().any(|n| n.contains(&replacement)), "the replacement is not drift: {drift:?}");
    let metrics = op.metrics().await?;
    assert_eq!(
        metric_sum(&metrics, "dbgrant_drift_corrections_total", &[("target", tname.as_str())]),
        1.0,
        "exactly one correction"
    );
    // The foreign assignment is back: dbgrant's replacement stays until
    // the binding goes (it owns it now), and the foreign one is untouched.
    cosmos.double.insert_role_assignment(&account, gone)?;

    // Deleting the bindings deletes only what dbgrant created.
    for b in [&readers, &writers] {
        cluster.delete(&cluster.admin, b, None).await?;
        cluster.wait_gone(b, None, SETTLE).await?;
    }
    for mine in [&managed, &replacement] {
        assert!(cosmos.double.role_assignment(&account, mine).is_none(), "dbgrant's own assignment {mine} must go");
    }
    for a in [&identical, &unrelated] {
        assert_eq!(cosmos.double.role_assignment(&account, &a.name).as_ref(), Some(a), "foreign assignment changed");
    }
    let foreign: BTreeSet<String> = [&identical, &unrelated].iter().map(|a| a.name.to_ascii_lowercase()).collect();
    let touched: Vec<String> = cosmos
        .double
        .arm_requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::ArmWrite)
        .filter(|r| foreign.iter().any(|f| r.path.to_ascii_lowercase().ends_with(f)))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(touched.is_empty(), "dbgrant wrote foreign assignments: {touched:?}");

    delete_targets(&cluster, std::slice::from_ref(&target)).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_resync_issues_no_arm_writes() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("cosmos-idle").await?;
    let cosmos = arm_double(&cluster).await?;
    let n = suffix(&ns.name);
    let account = new_account(&cosmos, &format!("e2e-idle-{n}"));
    let target = cosmos_target(&format!("idle-{n}"), &cosmos, &account, workload_identity(&cosmos));
    let tname = manifests::name(&target).to_string();
    let definition = json!({
        "apiVersion": "dbgrant.io/v1alpha1", "kind": "CosmosRoleDefinition",
        "metadata": {"name": format!("idle-items-{n}")},
        "spec": {
            "targetRef": {"name": tname},
            "roleName": format!("Idle Items {n}"),
            "dataActions": [
                "Microsoft.DocumentDB/databaseAccounts/readMetadata",
                "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/*"
            ],
            "assignableScopes": [{"database": "orders"}]
        }
    });
    let bindings = [
        in_ns(
            cosmos_binding(
                "readers",
                &tname,
                READERS,
                json!({"builtIn": "DataReader"}),
                json!([{"database": "orders"}, {"database": "catalog"}]),
            ),
            &ns.name,
        ),
        in_ns(
            cosmos_binding(
                "writers",
                &tname,
                WRITERS,
                json!({"name": manifests::name(&definition)}),
                json!([{"database": "orders", "container": "items"}]),
            ),
            &ns.name,
        ),
    ];
    let resync = Duration::from_secs(3);
    let mut op = operator(&cluster, &cosmos, "cosmos-idle", resync, &mut dump).await?;
    cluster.apply(&cluster.admin, &target, None).await?;
    cluster.apply(&cluster.admin, &definition, None).await?;
    cluster.apply_all(&cluster.admin, &bindings, None).await?;
    cluster.wait_condition(&target, None, "Ready", "True", Some("Connected"), SETTLE).await?;
    cluster.wait_condition(&definition, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    for b in &bindings {
        cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    }
    assert_eq!(cosmos.double.role_assignments(&account).len(), 3);

    // Converged: let one resync pass, then count across the next two.
    resyncs(&cluster, &target, 1, SETTLE).await?;
    cosmos.double.clear_log();
    resyncs(&cluster, &target, 2, SETTLE).await?;
    let requests = cosmos.double.arm_requests();
    let counters = cosmos.double.account_counters(&account);
    let shown: Vec<String> = requests.iter().map(|r| format!("{} {} -> {}", r.method, r.path, r.status)).collect();
    assert_eq!(counters.writes, 0, "a steady-state resync wrote:\n{}", shown.join("\n"));
    assert_eq!(counters.polls, 0, "no operation should be running:\n{}", shown.join("\n"));
    // It did look: both LISTs ran on every resync (nothing else needed).
    assert!(counters.reads >= 3, "expected the two LISTs per resync:\n{}", shown.join("\n"));
    assert!(
        requests.iter().all(|r| r.method == "GET"
            && (r.path.ends_with("/sqlRoleDefinitions") || r.path.ends_with("/sqlRoleAssignments"))),
        "a steady-state resync should only LIST:\n{}",
        shown.join("\n")
    );

    for b in &bindings {
        cluster.delete(&cluster.admin, b, None).await?;
        cluster.wait_gone(b, None, SETTLE).await?;
    }
    cluster.delete(&cluster.admin, &definition, None).await?;
    cluster.wait_gone(&definition, None, SETTLE).await?;
    assert!(cosmos.double.role_assignments(&account).is_empty());
    delete_targets(&cluster, std::slice::from_ref(&target)).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_cosmos_binding_while_the_operator_is_down_revokes_on_restart() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("cosmos-finalizer").await?;
    let cosmos = arm_double(&cluster).await?;
    let n = suffix(&ns.name);
    let account = new_account(&cosmos, &format!("e2e-fin-{n}"));
    let target = cosmos_target(&format!("fin-{n}"), &cosmos, &account, workload_identity(&cosmos));
    let binding = in_ns(
        cosmos_binding(
            "readers",
            manifests::name(&target),
            READERS,
            json!({"builtIn": "DataReader"}),
            json!([{"database": "orders"}]),
        ),
        &ns.name,
    );
    let mut op = operator(&cluster, &cosmos, "cosmos-finalizer", Duration::from_secs(300), &mut dump).await?;
    cluster.apply(&cluster.admin, &target, None).await?;
    cluster.apply(&cluster.admin, &binding, None).await?;
    cluster.wait_condition(&binding, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    assert_eq!(cosmos.double.role_assignments(&account).len(), 1);

    assert!(op.stop(Duration::from_secs(10)).await?, "operator did not exit cleanly on SIGTERM");
    cluster.delete(&cluster.admin, &binding, None).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stuck =
        cluster.get(&cluster.admin, &binding, None).await?.expect("binding must stay while the operator is down");
    assert!(stuck.metadata.deletion_timestamp.is_some(), "binding should be Terminating");
    assert_eq!(stuck.metadata.finalizers.as_deref(), Some(&["dbgrant.io/revoke".to_string()][..]));
    assert_eq!(cosmos.double.role_assignments(&account).len(), 1, "nothing may be revoked while the operator is down");

    op.spawn().await?;
    cluster.wait_gone(&binding, None, SETTLE).await?;
    assert!(cosmos.double.role_assignments(&account).is_empty(), "revocation must complete after restart");
    delete_targets(&cluster, std::slice::from_ref(&target)).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_keeps_the_assignment_after_the_binding_and_a_restart() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("cosmos-retain").await?;
    let cosmos = arm_double(&cluster).await?;
    let n = suffix(&ns.name);
    let account = new_account(&cosmos, &format!("e2e-retain-{n}"));
    let mut target = cosmos_target(&format!("retain-{n}"), &cosmos, &account, workload_identity(&cosmos));
    // Retain is the target's decision.
    target["spec"]["policy"]["allowRetain"] = json!(true);
    let mut binding = in_ns(
        cosmos_binding(
            "kept",
            manifests::name(&target),
            READERS,
            json!({"builtIn": "DataReader"}),
            json!([{"database": "orders"}]),
        ),
        &ns.name,
    );
    binding["spec"]["deletionPolicy"] = json!("Retain");
    let mut op = operator(&cluster, &cosmos, "cosmos-retain", Duration::from_secs(3), &mut dump).await?;
    cluster.apply(&cluster.admin, &target, None).await?;
    cluster.apply(&cluster.admin, &binding, None).await?;
    let b = cluster.wait_condition(&binding, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    let managed = status_assignments(&b).first().map(|a| a.0.clone()).expect("one assignment");

    cluster.delete(&cluster.admin, &binding, None).await?;
    cluster.wait_gone(&binding, None, SETTLE).await?;
    // The access stays; the target records it as released, and later
    // resyncs — also after a restart — never delete it.
    let retained = |cosmos: &CosmosDouble| {
        let left = cosmos.double.role_assignments(&account);
        assert_eq!(left.len(), 1, "the retained assignment must stay: {left:#?}");
        assert!(left[0].principal_id.eq_ignore_ascii_case(READERS));
        assert!(left[0].role_definition_id.eq_ignore_ascii_case(&account.role_definition_id(DATA_READER_ID)));
        assert!(left[0].scope.eq_ignore_ascii_case(&account.database_scope("orders")));
        left[0].name.clone()
    };
    resyncs(&cluster, &target, 2, SETTLE).await?;
    let kept = retained(&cosmos);
    let tgt = cluster.get(&cluster.admin, &target, None).await?.expect("target");
    assert_eq!(tgt.data["status"]["managedRoleAssignments"], 0, "a released assignment is not managed");
    let released = tgt.metadata.annotations.clone().unwrap_or_default();
    let listed = released.get("dbgrant.io/released-assignments").cloned().unwrap_or_default();
    assert!(
        listed.to_ascii_lowercase().contains(&kept.to_ascii_lowercase()) || !kept.eq_ignore_ascii_case(&managed),
        "the hand-over should be recorded on the target: {released:?}"
    );
    assert!(op.stop(Duration::from_secs(10)).await?, "operator did not exit cleanly on SIGTERM");
    op.spawn().await?;
    resyncs(&cluster, &target, 2, SETTLE).await?;
    assert_eq!(retained(&cosmos), kept, "the retained assignment must survive a restart");

    delete_targets(&cluster, std::slice::from_ref(&target)).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_a_cosmos_target_with_everything_on_it_revokes_before_the_target_goes() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("cosmos-prune").await?;
    let cosmos = arm_double(&cluster).await?;
    let n = suffix(&ns.name);
    let account = new_account(&cosmos, &format!("e2e-prune-{n}"));
    let target = cosmos_target(&format!("prune-{n}"), &cosmos, &account, workload_identity(&cosmos));
    let tname = manifests::name(&target).to_string();
    let definition = json!({
        "apiVersion": "dbgrant.io/v1alpha1", "kind": "CosmosRoleDefinition",
        "metadata": {"name": format!("prune-items-{n}")},
        "spec": {
            "targetRef": {"name": tname},
            "roleName": format!("Prune Items {n}"),
            "dataActions": ["Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/read"],
            "assignableScopes": [{"database": "orders"}]
        }
    });
    let readers = in_ns(
        cosmos_binding("readers", &tname, READERS, json!({"builtIn": "DataReader"}), json!([{"database": "orders"}])),
        &ns.name,
    );
    let writers = in_ns(
        cosmos_binding(
            "writers",
            &tname,
            WRITERS,
            json!({"name": manifests::name(&definition)}),
            json!([{"database": "orders", "container": "items"}]),
        ),
        &ns.name,
    );
    let mut op = operator(&cluster, &cosmos, "cosmos-prune", Duration::from_secs(300), &mut dump).await?;
    cluster.apply(&cluster.admin, &target, None).await?;
    cluster.apply(&cluster.admin, &definition, None).await?;
    cluster.apply_all(&cluster.admin, &[readers.clone(), writers.clone()], None).await?;
    cluster.wait_condition(&target, None, "Ready", "True", Some("Connected"), SETTLE).await?;
    cluster.wait_condition(&definition, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    for b in [&readers, &writers] {
        cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    }
    assert_eq!(cosmos.double.role_assignments(&account).len(), 2);
    assert_eq!(cosmos.custom_definitions(&account).len(), 1);
    let t = cluster.get(&cluster.admin, &target, None).await?.expect("target");
    assert!(
        t.metadata.finalizers.iter().flatten().any(|f| f == "dbgrant.io/bindings"),
        "targets carry the bindings finalizer: {:?}",
        t.metadata.finalizers
    );

    // The target alone is deleted: it waits, naming what it waits for.
    cluster.delete(&cluster.admin, &target, None).await?;
    let t = cluster.wait_condition(&target, None, "Ready", "False", Some("Terminating"), SETTLE).await?;
    let msg = ready_message(&t);
    assert!(msg.starts_with("Terminating: waiting for 3 "), "{msg}");
    assert!(msg.contains(manifests::name(&definition)) && msg.contains("/readers"), "{msg}");
    assert_eq!(cosmos.double.role_assignments(&account).len(), 2, "access stays while the bindings do");

    // A GitOps prune deletes the rest at once: the bindings and the
    // definition revoke through the waiting target, then it goes.
    for o in [&readers, &writers, &definition] {
        cluster.delete(&cluster.admin, o, None).await?;
    }
    for o in [&readers, &writers, &definition, &target] {
        cluster.wait_gone(o, None, SETTLE).await?;
    }
    let left = cosmos.double.role_assignments(&account);
    assert!(left.is_empty(), "assignments left behind: {left:#?}");
    assert!(cosmos.custom_definitions(&account).is_empty(), "the custom definition was left behind");
    assert!(!op.log_text().contains("nothing to revoke"), "revocation was skipped:\n{}", op.log_tail(40));
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cosmos_revocation_keeps_the_binding_until_azure_confirms_it() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("cosmos-stuck").await?;
    let cosmos = arm_double(&cluster).await?;
    let n = suffix(&ns.name);
    let account = new_account(&cosmos, &format!("e2e-stuck-{n}"));
    let target = cosmos_target(&format!("stuck-{n}"), &cosmos, &account, workload_identity(&cosmos));
    let tname = manifests::name(&target).to_string();
    let reader = json!({"builtIn": "DataReader"});
    let stuck =
        in_ns(cosmos_binding("stuck", &tname, READERS, reader.clone(), json!([{"database": "orders"}])), &ns.name);
    let other = in_ns(cosmos_binding("other", &tname, WRITERS, reader, json!([{"database": "orders"}])), &ns.name);
    let mut op = operator(&cluster, &cosmos, "cosmos-stuck", Duration::from_secs(300), &mut dump).await?;
    cluster.apply(&cluster.admin, &target, None).await?;
    cluster.apply_all(&cluster.admin, &[stuck.clone(), other.clone()], None).await?;
    let mut names = Vec::new();
    for b in [&stuck, &other] {
        let o = cluster.wait_condition(b, None, "Ready", "True", Some("Applied"), SETTLE).await?;
        names.push(status_assignments(&o).first().map(|a| a.0.clone()).expect("one assignment"));
    }
    let (stuck_name, other_name) = (names[0].clone(), names[1].clone());

    // Azure fails every DELETE of the first binding's assignment.
    cosmos.double.inject(
        Fault::respond(
            FaultTarget::Path {
                method: Some("DELETE".into()),
                path_contains: format!("/sqlRoleAssignments/{stuck_name}"),
            },
            100_000,
            500,
            "InternalServerError",
        )
        .message("the resource provider is failing"),
    );
    cluster.delete(&cluster.admin, &stuck, None).await?;
    cluster.delete(&cluster.admin, &other, None).await?;
    // The other binding's revocation is not held up.
    cluster.wait_gone(&other, None, SETTLE).await?;
    assert!(cosmos.double.role_assignment(&account, &other_name).is_none(), "the other revocation went through");
    // The stuck one keeps its finalizer, says what is stuck, and its access
    // is really still there.
    let b = cluster.wait_condition(&stuck, None, "Ready", "False", Some("RevocationPending"), SETTLE).await?;
    let msg = ready_message(&b);
    assert!(msg.contains(&stuck_name.to_ascii_lowercase()) && msg.contains("failing"), "{msg}");
    assert!(b.metadata.deletion_timestamp.is_some());
    assert!(b.metadata.finalizers.iter().flatten().any(|f| f == "dbgrant.io/revoke"), "{:?}", b.metadata.finalizers);
    assert!(cosmos.double.role_assignment(&account, &stuck_name).is_some());
    assert_eq!(status_assignments(&b).len(), 1, "the status lists what is still in place");

    // Azure recovers: the retry deletes it, and only then the binding goes.
    cosmos.double.clear_faults();
    cluster.wait_gone(&stuck, None, Duration::from_secs(120)).await?;
    assert!(cosmos.double.role_assignments(&account).is_empty(), "{:#?}", cosmos.double.role_assignments(&account));
    assert!(op.is_running(), "operator crashed:\n{}", op.log_tail(60));
    delete_targets(&cluster, std::slice::from_ref(&target)).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

/// The Cosmos DB audit trail end to end: a churn (a custom definition and
/// two bindings created, a scope moved, the definition's actions changed,
/// everything deleted) leaves exactly one audit record per ARM write the
/// double answered, in order, each naming what triggered it, with no
/// credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_arm_write_has_one_audit_record() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("cosmos-audit").await?;
    let cosmos = arm_double(&cluster).await?;
    let n = suffix(&ns.name);
    let account = new_account(&cosmos, &format!("e2e-audit-{n}"));
    let target = cosmos_target(&format!("audit-{n}"), &cosmos, &account, workload_identity(&cosmos));
    let tname = manifests::name(&target).to_string();
    let mut definition = json!({
        "apiVersion": "dbgrant.io/v1alpha1", "kind": "CosmosRoleDefinition",
        "metadata": {"name": format!("audit-items-{n}")},
        "spec": {
            "targetRef": {"name": tname},
            "roleName": format!("Audit Items {n}"),
            "dataActions": ["Microsoft.DocumentDB/databaseAccounts/readMetadata"],
            "assignableScopes": [{"database": "orders"}]
        }
    });
    let readers = in_ns(
        cosmos_binding("readers", &tname, READERS, json!({"builtIn": "DataReader"}), json!([{"database": "orders"}])),
        &ns.name,
    );
    let writers = in_ns(
        cosmos_binding(
            "writers",
            &tname,
            WRITERS,
            json!({"name": manifests::name(&definition)}),
            json!([{"database": "orders", "container": "items"}]),
        ),
        &ns.name,
    );
    let mut op = operator(&cluster, &cosmos, "cosmos-audit", Duration::from_secs(300), &mut dump).await?;
    cluster.apply(&cluster.admin, &target, None).await?;
    cluster.apply(&cluster.admin, &definition, None).await?;
    cluster.apply_all(&cluster.admin, &[readers.clone(), writers.clone()], None).await?;
    for o in [&target, &definition, &readers, &writers] {
        let reason = if o == &target { "Connected" } else { "Applied" };
        cluster.wait_condition(o, None, "Ready", "True", Some(reason), SETTLE).await?;
    }
    let mut moved = readers.clone();
    moved["spec"]["scopes"] = json!([{"database": "catalog"}]);
    cluster.apply(&cluster.admin, &moved, None).await?;
    definition["spec"]["dataActions"] = json!([
        "Microsoft.DocumentDB/databaseAccounts/readMetadata",
        "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/read"
    ]);
    cluster.apply(&cluster.admin, &definition, None).await?;
    cluster.wait_condition(&moved, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    for o in [&moved, &writers] {
        cluster.delete(&cluster.admin, o, None).await?;
        cluster.wait_gone(o, None, SETTLE).await?;
    }
    cluster.delete(&cluster.admin, &definition, None).await?;
    cluster.wait_gone(&definition, None, SETTLE).await?;
    assert!(cosmos.double.role_assignments(&account).is_empty());

    let records: Vec<Value> = op.audit_records()?.into_iter().filter(|r| r["target"] == tname.as_str()).collect();
    let text = std::fs::read_to_string(&op.audit_log)?;
    // The operator signs in with a federated token (a JWT) and gets ARM
    // access tokens (JWTs): none may reach the trail.
    assert!(!text.contains("eyJ"), "the audit trail must never carry a token");
    for (_, v) in cosmos.operator_env() {
        if let Ok(token) = std::fs::read_to_string(&v) {
            assert!(!text.contains(token.trim()), "the audit trail must never carry the federated token");
        }
    }
    let arm: Vec<(String, String)> = cosmos
        .double
        .arm_requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::ArmWrite && r.path.contains(&account.name))
        .map(|r| (r.method.clone(), r.path.rsplit('/').next().unwrap_or_default().to_ascii_lowercase()))
        .collect();
    let audited: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let method = if r["operation"].as_str().unwrap_or_default().starts_with("put") { "PUT" } else { "DELETE" };
            (method.to_string(), r["object"]["name"].as_str().unwrap_or_default().to_ascii_lowercase())
        })
        .collect();
    assert!(arm.len() >= 7, "the churn wrote: {arm:?}");
    assert_eq!(audited, arm, "no write without a record, no record without a write");
    let kinds: BTreeSet<String> =
        records.iter().map(|r| r["trigger"]["kind"].as_str().unwrap_or("").to_string()).collect();
    assert!(kinds.contains("CosmosRoleBinding") && kinds.contains("CosmosRoleDefinition"), "{kinds:?}");
    let update = records.iter().find(|r| r["object"]["kind"] == "definition" && r["action"] == "update");
    assert!(
        update.is_some_and(|u| u["before"]["dataActions"].as_array().map(Vec::len) == Some(1)
            && u["after"]["dataActions"].as_array().map(Vec::len) == Some(2)),
        "{records:#?}"
    );

    delete_targets(&cluster, std::slice::from_ref(&target)).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

/// Observe mode on Cosmos DB: nothing written to ARM while the target and
/// the binding list the pending writes; enforcing writes exactly them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observe_cosmos_target_writes_nothing_until_it_enforces() -> Result<()> {
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("cosmos-observe").await?;
    let cosmos = arm_double(&cluster).await?;
    let n = suffix(&ns.name);
    let account = new_account(&cosmos, &format!("e2e-observe-{n}"));
    let mut target = cosmos_target(&format!("observe-{n}"), &cosmos, &account, workload_identity(&cosmos));
    target["spec"]["mode"] = json!("Observe");
    let tname = manifests::name(&target).to_string();
    let readers = in_ns(
        cosmos_binding(
            "readers",
            &tname,
            READERS,
            json!({"builtIn": "DataReader"}),
            json!([{"database": "orders"}, {"database": "catalog"}]),
        ),
        &ns.name,
    );
    let mut op = operator(&cluster, &cosmos, "cosmos-observe", Duration::from_secs(2), &mut dump).await?;
    cluster.apply(&cluster.admin, &target, None).await?;
    // The plan printed before the binding is applied names the assignments
    // the operator creates in the end (checked below).
    let dir = std::env::temp_dir().join(format!("dbgrant-cosmos-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("readers.yaml"), serde_yaml::to_string(&readers)?)?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbgrant"))
        .args(["plan", "-o", "json", "--kubeconfig"])
        .arg(&cluster.admin_kubeconfig)
        .arg("-f")
        .arg(&dir)
        .output()?;
    let printed: Value = serde_json::from_slice(&out.stdout)?;
    let mut planned_names: Vec<String> = printed["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["name"] == tname.as_str())
        .flat_map(|t| t["changes"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["object"] == "CosmosAssignment" && c["action"] == "Create")
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    planned_names.sort();
    assert_eq!(planned_names.len(), 2, "{printed:#}");
    cluster.apply(&cluster.admin, &readers, None).await?;
    let o = cluster.wait_condition(&readers, None, "Ready", "False", Some("Observing"), SETTLE).await?;
    let message = ready_message(&o);
    assert_eq!(
        message.matches("would create assignment").count() + message.matches("; create assignment").count(),
        2,
        "{message}"
    );
    let deadline = std::time::Instant::now() + SETTLE;
    let pending = loop {
        let t = cluster.get(&cluster.admin, &target, None).await?.map(|o| o.data).unwrap_or_default();
        if t["status"]["pending"]["writes"] == 2 {
            break t["status"]["pending"]["changes"].clone();
        }
        if std::time::Instant::now() > deadline {
            bail!("the target never listed its 2 pending writes: {t:#}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let counters = cosmos.double.account_counters(&account);
    assert_eq!(counters.writes, 0, "an Observe target wrote to ARM");
    assert!(cosmos.double.role_assignments(&account).is_empty());

    // `dbgrant plan --backend`, run as the operator's identity would (its
    // environment, the target's Secrets), sees the same two writes on the
    // live account, and makes none.
    let empty = std::env::temp_dir().join(format!("dbgrant-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty)?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbgrant"))
        .args(["plan", "-o", "json", "--backend", "--operator-namespace", &cluster.operator_namespace, "--kubeconfig"])
        .arg(&cluster.admin_kubeconfig)
        .arg("-f")
        .arg(&empty)
        .envs(cosmos.operator_env())
        .output()?;
    let live: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("{e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    let view = live["backend"].as_array().and_then(|v| v.iter().find(|t| t["name"] == tname.as_str()).cloned());
    let view = view.ok_or_else(|| anyhow::anyhow!("no live view of {tname}: {live:#}"))?;
    assert!(view["error"].is_null(), "{view:#}");
    let mut live_writes: Vec<String> =
        view["writes"].as_array().into_iter().flatten().filter_map(|w| w.as_str().map(str::to_string)).collect();
    let mut listed: Vec<String> =
        pending.as_array().into_iter().flatten().filter_map(|w| w.as_str().map(str::to_string)).collect();
    live_writes.sort();
    listed.sort();
    assert_eq!(live_writes, listed, "the live plan is the target's pending list");
    assert_eq!(cosmos.double.account_counters(&account).writes, 0, "--backend writes nothing");

    target["spec"]["mode"] = json!("Enforce");
    cluster.apply(&cluster.admin, &target, None).await?;
    cluster.wait_condition(&readers, None, "Ready", "True", Some("Applied"), SETTLE).await?;
    let mut created: Vec<String> =
        cosmos.double.role_assignments(&account).iter().map(|a| a.name.to_ascii_lowercase()).collect();
    let mut planned: Vec<String> = pending
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str()?.strip_prefix("create assignment ")?.split(' ').next().map(str::to_ascii_lowercase))
        .collect();
    created.sort();
    planned.sort();
    assert_eq!(created, planned, "enforcing created exactly the observed assignments");
    assert_eq!(created, planned_names, "and the ones `dbgrant plan` printed before the binding was applied");
    assert_eq!(cosmos.double.account_counters(&account).writes, 2, "and nothing else");

    cluster.delete(&cluster.admin, &readers, None).await?;
    cluster.wait_gone(&readers, None, SETTLE).await?;
    delete_targets(&cluster, std::slice::from_ref(&target)).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}

/// A pass that writes many assignments (at ARM's pace, minutes at scale)
/// publishes each binding's Ready as soon as that binding's assignments are
/// in place, not when the pass ends: bindings turn Ready one by one while
/// the account fills, rather than in one batch at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_turn_ready_as_their_assignments_land_not_when_the_pass_ends() -> Result<()> {
    const N: usize = 16;
    let _lock = operator_lock().await;
    let (cluster, ns, mut dump) = setup("cosmos-early").await?;
    let cosmos = arm_double(&cluster).await?;
    let n = suffix(&ns.name);
    let account = new_account(&cosmos, &format!("e2e-early-{n}"));
    let groups: Vec<String> = (0..N).map(|i| format!("e0000000-0000-4000-8000-{i:012}")).collect();
    for g in &groups {
        cosmos.double.add_principal(Principal::group(g).named(format!("sg-early-{g}")));
    }
    let target = cosmos_target(&format!("early-{n}"), &cosmos, &account, workload_identity(&cosmos));
    let tname = manifests::name(&target).to_string();
    let bindings: Vec<Value> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            in_ns(
                cosmos_binding(
                    &format!("b{i}"),
                    &tname,
                    g,
                    json!({"builtIn": "DataReader"}),
                    json!([{"database": "orders"}]),
                ),
                &ns.name,
            )
        })
        .collect();
    let mut op = operator(&cluster, &cosmos, "cosmos-early", Duration::from_secs(300), &mut dump).await?;
    cluster.apply(&cluster.admin, &target, None).await?;
    cluster.wait_condition(&target, None, "Ready", "True", Some("Connected"), SETTLE).await?;
    // Every ARM call takes 150 ms: one assignment (PUT, then polls) takes
    // about half a second, the whole account several seconds.
    cosmos.double.set_latency(Duration::from_millis(150));
    cluster.apply_all(&cluster.admin, &bindings, None).await?;
    // For each binding, how many assignments the account held when it was
    // first seen Ready.
    let api = cluster.dbgrant(&cluster.admin, "CosmosRoleBinding", Some(&ns.name)).await?;
    let mut held_when_ready: std::collections::BTreeMap<String, usize> = Default::default();
    let deadline = std::time::Instant::now() + SETTLE;
    while held_when_ready.len() < N {
        let held = cosmos.double.role_assignments(&account).len();
        for b in api.list(&Default::default()).await?.items {
            let ready = b.data["status"]["observedGeneration"].as_i64() == b.metadata.generation
                && dbgrant_harness::cluster::condition_status(&b, "Ready") == Some("True");
            if ready {
                held_when_ready.entry(b.metadata.name.clone().unwrap_or_default()).or_insert(held);
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("only {} of {N} bindings Ready after {SETTLE:?}: {held_when_ready:?}", held_when_ready.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cosmos.double.set_latency(Duration::ZERO);
    let distinct: BTreeSet<usize> = held_when_ready.values().copied().collect();
    let before_the_end = held_when_ready.values().filter(|h| **h < N).count();
    crate::faults_common::summary(&format!(
        "cosmos early Ready: {N} bindings on one account, ARM 150 ms per call; Ready seen with {:?} assignments \
         on the account ({} distinct moments, {before_the_end} bindings Ready before the last assignment landed)",
        held_when_ready.values().collect::<Vec<_>>(),
        distinct.len()
    ));
    // Ready only at the end of each pass would show one value per pass
    // (two or three); as assignments land, nearly one per binding.
    assert!(
        distinct.len() >= N / 2,
        "bindings turned Ready in batches, not as their assignments landed: {held_when_ready:?}"
    );
    assert_eq!(cosmos.double.role_assignments(&account).len(), N);

    for b in &bindings {
        cluster.delete(&cluster.admin, b, None).await?;
    }
    for b in &bindings {
        cluster.wait_gone(b, None, SETTLE).await?;
    }
    assert!(cosmos.double.role_assignments(&account).is_empty());
    delete_targets(&cluster, std::slice::from_ref(&target)).await?;
    op.stop(Duration::from_secs(10)).await?;
    dump.passed();
    Ok(())
}
