//! Every Kubernetes API permission the operator uses.
//!
//! The Helm chart's ClusterRole and Role must grant each of these, and no
//! Secret access beyond the one `get` in the operator's namespace. The end-to-end suite checks the list against the rendered
//! chart on a real apiserver (one SelfSubjectAccessReview per entry, as the
//! operator identity), and runs the operator as that identity, so a call
//! added here without a chart rule, or a chart rule dropped, fails a test.
//! Keep it in step with the code: a new API call means a new entry.

/// Where a permission applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    /// Every namespace (or cluster-scoped resources).
    Cluster,
    /// Only the operator's own namespace.
    OperatorNamespace,
}

/// One verb on one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource (with `/subresource` when it is one).
    pub resource: &'static str,
    pub verb: &'static str,
    /// Scope of the grant.
    pub scope: Where,
    /// Why the operator needs it.
    pub why: &'static str,
}

const fn p(
    group: &'static str,
    resource: &'static str,
    verb: &'static str,
    scope: Where,
    why: &'static str,
) -> Permission {
    Permission { group, resource, verb, scope, why }
}

/// The dbgrant kinds' plural resource names.
pub const DBGRANT_RESOURCES: [&str; 5] =
    ["mongotargets", "mongorolebindings", "cosmostargets", "cosmosroledefinitions", "cosmosrolebindings"];

/// The permissions, by resource.
pub fn required() -> Vec<Permission> {
    use Where::*;
    let mut out = Vec::new();
    for r in DBGRANT_RESOURCES {
        out.push(p("dbgrant.io", r, "list", Cluster, "controllers' initial list"));
        out.push(p("dbgrant.io", r, "watch", Cluster, "controllers' watches"));
        out.push(p(
            "dbgrant.io",
            r,
            "patch",
            Cluster,
            "add and remove the dbgrant.io/revoke finalizer (bindings, role definitions) and the dbgrant.io/bindings finalizer (targets); the released-assignments annotation on CosmosTargets",
        ));
    }
    for r in [
        "mongotargets/status",
        "mongorolebindings/status",
        "cosmostargets/status",
        "cosmosroledefinitions/status",
        "cosmosrolebindings/status",
    ] {
        out.push(p("dbgrant.io", r, "patch", Cluster, "server-side apply of status"));
    }
    out.push(p("events.k8s.io", "events", "create", Cluster, "Events on transitions, in the object's namespace"));
    out.push(p("events.k8s.io", "events", "patch", Cluster, "series count of a repeated Event"));
    out.push(p("", "secrets", "get", OperatorNamespace, "target connection strings, credentials, CA bundles"));
    for verb in ["get", "create", "update", "patch"] {
        out.push(p("coordination.k8s.io", "leases", verb, OperatorNamespace, "leader election"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_only_read_by_name_in_the_operator_namespace() {
        let secrets: Vec<_> = required().into_iter().filter(|p| p.resource == "secrets").collect();
        assert_eq!(secrets.len(), 1);
        assert_eq!((secrets[0].verb, secrets[0].scope), ("get", Where::OperatorNamespace));
    }

    #[test]
    fn the_operator_never_writes_specs() {
        for p in required() {
            if p.group == "dbgrant.io" {
                assert!(["list", "watch", "patch"].contains(&p.verb), "{p:?}");
            }
        }
    }
}
