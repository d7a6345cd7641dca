//! The Helm chart, rendered by the pinned helm built from Go modules.

use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{manifests, paths};

/// RBAC kinds the chart renders for the operator.
pub const RBAC_KINDS: [&str; 5] = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"];

/// `helm template dbgrant charts/dbgrant -n <namespace> [--set k=v ...]`.
pub fn template(namespace: &str, set: &[&str]) -> Result<Vec<Value>> {
    template_for(namespace, set, &[])
}

/// [`template`] for a cluster that serves `api_versions` beyond helm's
/// defaults (`--api-versions`, e.g.
/// `admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy`).
pub fn template_for(namespace: &str, set: &[&str], api_versions: &[&str]) -> Result<Vec<Value>> {
    let helm = paths::tool("helm")?;
    let mut cmd = Command::new(&helm);
    cmd.args(["template", "dbgrant"]).arg(paths::repo_root().join("charts/dbgrant")).args(["--namespace", namespace]);
    for s in set {
        cmd.args(["--set", s]);
    }
    for v in api_versions {
        cmd.args(["--api-versions", v]);
    }
    let out = cmd.output().with_context(|| format!("running {}", helm.display()))?;
    if !out.status.success() {
        bail!("helm template failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    manifests::parse(&String::from_utf8(out.stdout)?)
}

/// Only the operator's RBAC objects (and its ServiceAccount) from a render.
pub fn rbac(docs: &[Value]) -> Vec<Value> {
    docs.iter().filter(|d| RBAC_KINDS.contains(&manifests::kind(d))).cloned().collect()
}
