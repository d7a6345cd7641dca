//! Good and bad manifests for every kind, applied to the real apiserver:
//! the good ones (every file in `deploy/examples/`) are admitted, the bad
//! ones are refused with a message that names the offending field.

use anyhow::{Result, bail};
use dbgrant_harness::manifests;
use serde_json::{Value, json};

use crate::common::setup;

/// Apply `patch` (a JSON merge patch) to a copy of `base`.
fn with(base: &Value, patch: Value) -> Value {
    let mut v = base.clone();
    merge(&mut v, patch);
    v
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(&k);
                } else {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b,
    }
}

fn example(file: &str, kind: &str) -> Result<Value> {
    let docs = manifests::example(file)?;
    match docs.into_iter().find(|d| manifests::kind(d) == kind) {
        Some(d) => Ok(d),
        None => bail!("{file} has no {kind}"),
    }
}

/// (case, manifest, fragments the apiserver's message must contain)
fn bad_cases() -> Result<Vec<(&'static str, Value, Vec<&'static str>)>> {
    let mt = example("mongo-target.yaml", "MongoTarget")?;
    let mrb = example("mongo-rolebindings.yaml", "MongoRoleBinding")?;
    let ct = example("cosmos-target.yaml", "CosmosTarget")?;
    let crdef = example("cosmos-roledefinition.yaml", "CosmosRoleDefinition")?;
    let crb = example("cosmos-rolebindings.yaml", "CosmosRoleBinding")?;
    let group = |id: &str| json!({"spec": {"subjects": [{"kind": "Group", "objectId": id}]}});
    Ok(vec![
        // MongoTarget
        (
            "mongo target with two auth methods",
            with(&mt, json!({"spec": {"auth": {"x509": {"certificateSecretRef": {"name": "c", "key": "tls.crt"}}}}})),
            vec!["spec.auth", "exactly one of scram, x509, oidc and connectionString"],
        ),
        (
            "mongo target with an unknown authorization claim",
            with(&mt, json!({"spec": {"oidc": {"authorizationClaim": "email"}}})),
            vec!["spec.oidc.authorizationClaim", "Unsupported value"],
        ),
        (
            "mongo target without a connection",
            with(&mt, json!({"spec": {"connection": null}})),
            vec!["spec.connection", "Required"],
        ),
        // MongoRoleBinding
        ("mongo binding with an invalid GUID", with(&mrb, group("not-a-guid")), vec!["spec.subjects[0].objectId"]),
        ("mongo binding with empty subjects", with(&mrb, json!({"spec": {"subjects": []}})), vec!["spec.subjects"]),
        (
            "mongo binding with an unknown subject kind",
            with(
                &mrb,
                json!({"spec": {"subjects": [{"kind": "Robot", "objectId": "71b72785-7c23-4e2e-9fa7-ad62ce90a22a"}]}}),
            ),
            vec!["spec.subjects[0].kind", "Unsupported value"],
        ),
        (
            "mongo binding with neither roles nor privileges",
            with(&mrb, json!({"spec": {"roles": null}})),
            vec!["grant at least one role or privilege"],
        ),
        (
            "mongo binding with expiresAt and duration",
            with(&mrb, json!({"spec": {"expiresAt": "2030-01-01T00:00:00Z", "duration": "1h"}})),
            vec!["set at most one of expiresAt and duration"],
        ),
        (
            "mongo binding with a malformed duration",
            with(&mrb, json!({"spec": {"duration": "1 week"}})),
            vec!["spec.duration"],
        ),
        (
            "mongo binding with an AppRole subject that sets objectId",
            with(
                &mrb,
                json!({"spec": {"subjects": [{"kind": "AppRole", "objectId": "71b72785-7c23-4e2e-9fa7-ad62ce90a22a"}]}}),
            ),
            vec!["AppRole subjects set value"],
        ),
        (
            "mongo binding with a collection privilege missing its db",
            with(&mrb, json!({"spec": {"privileges": [{"resource": {"collection": "audit"}, "actions": ["find"]}]}})),
            vec!["spec.privileges[0].resource"],
        ),
        (
            "mongo binding with an injection-looking role database",
            with(&mrb, json!({"spec": {"roles": [{"role": "read", "db": "orders$where"}]}})),
            vec!["spec.roles[0].db"],
        ),
        (
            // MongoResource has no anyResource: the field is pruned, and
            // what is left is neither a namespace nor the cluster.
            "mongo binding with an anyResource privilege",
            with(&mrb, json!({"spec": {"privileges": [{"resource": {"anyResource": true}, "actions": ["find"]}]}})),
            vec!["spec.privileges[0].resource", "set either cluster: true, or both db and collection"],
        ),
        (
            "mongo binding with an unknown deletion policy",
            with(&mrb, json!({"spec": {"deletionPolicy": "Orphan"}})),
            vec!["spec.deletionPolicy", "Unsupported value"],
        ),
        // CosmosTarget
        (
            "cosmos target with an invalid subscription id",
            with(&ct, json!({"spec": {"subscriptionId": "sub-1"}})),
            vec!["spec.subscriptionId"],
        ),
        (
            "cosmos target with two credentials",
            with(&ct, json!({"spec": {"credential": {"managedIdentity": {}}}})),
            vec![
                "spec.credential",
                "exactly one of workloadIdentity, managedIdentity, clientSecret and clientCertificate",
            ],
        ),
        // CosmosRoleDefinition
        (
            "cosmos role definition without data actions",
            with(&crdef, json!({"spec": {"dataActions": []}})),
            vec!["spec.dataActions"],
        ),
        (
            "cosmos role definition with a foreign data action",
            with(&crdef, json!({"spec": {"dataActions": ["Microsoft.Storage/storageAccounts/read"]}})),
            vec!["spec.dataActions[0]"],
        ),
        (
            "cosmos role definition with a container scope missing its database",
            with(&crdef, json!({"spec": {"assignableScopes": [{"container": "products"}]}})),
            vec!["a container scope needs its database"],
        ),
        (
            "cosmos role definition assignable at database ..",
            with(&crdef, json!({"spec": {"assignableScopes": [{"database": ".."}]}})),
            vec!["spec.assignableScopes[0].database", "a database name may not be . or .."],
        ),
        (
            "cosmos role definition assignable at container .",
            with(&crdef, json!({"spec": {"assignableScopes": [{"database": "catalog", "container": "."}]}})),
            vec!["spec.assignableScopes[0].container", "a container name may not be . or .."],
        ),
        (
            "cosmos role definition assignable at a database with a slash",
            with(&crdef, json!({"spec": {"assignableScopes": [{"database": "catalog/colls"}]}})),
            vec!["spec.assignableScopes[0].database"],
        ),
        // CosmosRoleBinding
        (
            "cosmos binding with an AppRole subject",
            with(&crb, json!({"spec": {"subjects": [{"kind": "AppRole", "value": "Catalog.Read"}]}})),
            vec!["AppRole subjects are not supported"],
        ),
        (
            "cosmos binding with builtIn and name",
            with(&crb, json!({"spec": {"roleDefinition": {"builtIn": "DataReader", "name": "catalog-item-reader"}}})),
            vec!["set exactly one of builtIn and name"],
        ),
        (
            "cosmos binding with an unknown built-in role",
            with(&crb, json!({"spec": {"roleDefinition": {"builtIn": "Owner"}}})),
            vec!["spec.roleDefinition.builtIn", "Unsupported value"],
        ),
        ("cosmos binding with an invalid GUID", with(&crb, group("7b72785-7c23")), vec!["spec.subjects[0].objectId"]),
        (
            "cosmos binding scoped to database ..",
            with(&crb, json!({"spec": {"scopes": [{"database": ".."}]}})),
            vec!["spec.scopes[0].database", "a database name may not be . or .."],
        ),
        (
            "cosmos binding scoped to database .",
            with(&crb, json!({"spec": {"scopes": [{"database": "."}]}})),
            vec!["spec.scopes[0].database", "a database name may not be . or .."],
        ),
        (
            "cosmos binding scoped to container ..",
            with(&crb, json!({"spec": {"scopes": [{"database": "catalog", "container": ".."}]}})),
            vec!["spec.scopes[0].container", "a container name may not be . or .."],
        ),
        (
            "cosmos binding scoped to a database with a slash",
            with(&crb, json!({"spec": {"scopes": [{"database": "catalog/colls/x"}]}})),
            vec!["spec.scopes[0].database"],
        ),
        (
            "cosmos binding scoped to a database with a backslash",
            with(&crb, json!({"spec": {"scopes": [{"database": "catalog\\x"}]}})),
            vec!["spec.scopes[0].database"],
        ),
        (
            "cosmos binding scoped to a database with a question mark",
            with(&crb, json!({"spec": {"scopes": [{"database": "catalog?x"}]}})),
            vec!["spec.scopes[0].database"],
        ),
        (
            "cosmos binding scoped to a container with a hash",
            with(&crb, json!({"spec": {"scopes": [{"database": "catalog", "container": "items#1"}]}})),
            vec!["spec.scopes[0].container"],
        ),
        (
            "cosmos binding scoped to a database with a trailing space",
            with(&crb, json!({"spec": {"scopes": [{"database": "catalog "}]}})),
            vec!["spec.scopes[0].database"],
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_is_admitted() -> Result<()> {
    let (cluster, ns, dump) = setup("valid").await?;
    let mut admitted = 0;
    for file in std::fs::read_dir(dbgrant_harness::paths::repo_root().join("deploy/examples"))? {
        let path = file?.path();
        for doc in manifests::load(&path)? {
            // Namespaced examples go to the test's namespace; Secrets to
            // the operator's; dry run so nothing is stored.
            let ns = match manifests::kind(&doc) {
                "Namespace" => continue,
                "Secret" => cluster.operator_namespace.clone(),
                _ => ns.name.clone(),
            };
            let mut doc = doc;
            if doc["metadata"]["namespace"].is_string() {
                doc["metadata"]["namespace"] = json!(ns);
            }
            if let Err(e) = cluster.create(&cluster.admin, &doc, Some(&ns), true).await {
                bail!("{} {} from {} refused: {e}", manifests::kind(&doc), manifests::name(&doc), path.display());
            }
            admitted += 1;
        }
    }
    assert!(admitted >= 8, "expected every kind among the examples, admitted {admitted}");
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_refused_naming_the_field() -> Result<()> {
    let (cluster, ns, dump) = setup("invalid").await?;
    let mut failures = Vec::new();
    let cases = bad_cases()?;
    for (case, mut doc, fragments) in cases.clone() {
        if doc["metadata"]["namespace"].is_string() {
            doc["metadata"]["namespace"] = json!(ns.name);
        }
        match cluster.create(&cluster.admin, &doc, Some(&ns.name), true).await {
            Ok(_) => failures.push(format!("{case}: admitted")),
            Err(kube::Error::Api(s)) => {
                let missing: Vec<_> = fragments.iter().filter(|f| !s.message.contains(*f)).collect();
                if s.code != 422 || !missing.is_empty() {
                    failures.push(format!("{case}: {} {:?} lacks {missing:?}", s.code, s.message));
                }
            }
            Err(e) => failures.push(format!("{case}: unexpected error {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad manifests misjudged:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_target_ref_is_immutable() -> Result<()> {
    let (cluster, ns, dump) = setup("immutable").await?;
    let mrb = crate::common::in_ns(example("mongo-rolebindings.yaml", "MongoRoleBinding")?, &ns.name);
    cluster.apply(&cluster.admin, &mrb, None).await?;
    let moved = with(&mrb, json!({"spec": {"targetRef": {"name": "another-target"}}}));
    let err = cluster.apply(&cluster.admin, &moved, None).await.expect_err("targetRef change admitted");
    assert!(format!("{err:#}").contains("targetRef is immutable"), "{err:#}");
    cluster.delete(&cluster.admin, &mrb, None).await?;
    dump.passed();
    Ok(())
}
