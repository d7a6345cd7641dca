//! The chart's RBAC on a real apiserver: sufficient for everything the
//! operator does, and no Secret access beyond the operator's namespace.
//! Also: every object the chart renders passes a server-side dry run.

use anyhow::Result;
use dbgrant::runtime::rbac::{self, Where};
use dbgrant_harness::{Cluster, chart, manifests};
use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::Secret,
};
use kube::{Api, api::PostParams};
use serde_json::json;

use crate::common::setup;

/// Ask the apiserver, as the operator identity, whether it may do this.
async fn can(cluster: &Cluster, group: &str, resource: &str, verb: &str, ns: Option<&str>) -> Result<bool> {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r.to_string(), Some(s.to_string())),
        None => (resource.to_string(), None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.into()),
                resource: Some(resource),
                subresource,
                verb: Some(verb.into()),
                namespace: ns.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(cluster.operator.clone());
    let out = api.create(&PostParams::default(), &review).await?;
    Ok(out.status.is_some_and(|s| s.allowed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_grants_every_permission_the_operator_uses() -> Result<()> {
    let (cluster, ns, dump) = setup("rbac").await?;
    let mut missing = Vec::new();
    let required = rbac::required();
    for p in &required {
        // Cluster-wide grants must hold in a tenant namespace (bindings,
        // Events) and cluster-wide (targets); namespace grants in the
        // operator's namespace.
        let scopes: Vec<Option<&str>> = match p.scope {
            Where::Cluster => vec![None, Some(&ns.name)],
            Where::OperatorNamespace => vec![Some(&cluster.operator_namespace)],
        };
        for scope in scopes {
            if !can(&cluster, p.group, p.resource, p.verb, scope).await? {
                missing.push(format!("{} {}/{} in {scope:?} ({})", p.verb, p.group, p.resource, p.why));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the chart's RBAC lacks {} permission(s) the operator uses:\n{}",
        missing.len(),
        missing.join("\n")
    );
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cannot_read_secrets_outside_its_namespace() -> Result<()> {
    let (cluster, ns, dump) = setup("secrets").await?;
    // A tenant's Secret: the operator identity must not read it.
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "tenant-db-password", "namespace": ns.name},
        "stringData": {"password": "tenant-secret-value"}
    });
    cluster.apply(&cluster.admin, &secret, None).await?;
    let as_operator: Api<Secret> = Api::namespaced(cluster.operator.clone(), &ns.name);
    match as_operator.get("tenant-db-password").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "expected Forbidden, got {s:?}"),
        Ok(_) => panic!("the operator identity read a Secret in tenant namespace {}", ns.name),
        Err(e) => return Err(e.into()),
    }
    // Nor list, watch or write Secrets anywhere, nor get them cluster-wide;
    // in its own namespace it may only get by name.
    let mut allowed = Vec::new();
    for verb in ["get", "list", "watch", "create", "update", "patch", "delete"] {
        for scope in [None, Some(ns.name.as_str()), Some("kube-system"), Some("default")] {
            if can(&cluster, "", "secrets", verb, scope).await? {
                allowed.push(format!("{verb} secrets in {scope:?}"));
            }
        }
        if verb != "get" && can(&cluster, "", "secrets", verb, Some(&cluster.operator_namespace)).await? {
            allowed.push(format!("{verb} secrets in the operator namespace"));
        }
    }
    assert!(allowed.is_empty(), "the chart grants Secret access beyond get-by-name in its namespace: {allowed:?}");
    // Sanity: the check above can say yes.
    assert!(can(&cluster, "", "secrets", "get", Some(&cluster.operator_namespace)).await?);
    dump.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rendered_chart_object_passes_server_side_dry_run() -> Result<()> {
    let (cluster, _ns, dump) = setup("chart").await?;
    // Defaults, and every optional part switched on.
    let variants: [&[&str]; 2] = [
        &[],
        &[
            "replicaCount=2",
            "networkPolicy.enabled=true",
            "workloadIdentity.enabled=true",
            "workloadIdentity.clientId=5f796ca5-e63f-42b0-9fef-be1cbe27d1ed",
            "workloadIdentity.tenantId=aa798838-6d8b-4587-bf07-595d548762c8",
            "rbac.aggregateToDefaultRoles=true",
        ],
    ];
    let mut checked = 0;
    for set in variants {
        let docs = chart::template(&cluster.operator_namespace, set)?;
        assert!(docs.iter().any(|d| manifests::kind(d) == "Deployment"), "no Deployment rendered with {set:?}");
        if set.contains(&"replicaCount=2") {
            let dep = docs.iter().find(|d| manifests::kind(d) == "Deployment").expect("deployment");
            let args = dep["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
            assert!(args.contains("--leader-elect=true"), "replicas > 1 must turn on leader election: {args}");
        }
        for doc in &docs {
            cluster.dry_run(&cluster.admin, doc, Some(&cluster.operator_namespace)).await.map_err(|e| {
                anyhow::anyhow!("{} {} with {set:?}: {e:#}", manifests::kind(doc), manifests::name(doc))
            })?;
            checked += 1;
        }
    }
    eprintln!("dry-ran {checked} rendered objects");
    dump.passed();
    Ok(())
}
