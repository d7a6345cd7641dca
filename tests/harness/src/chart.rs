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

/// Run the pinned helm against a cluster: `helm <args>` with `KUBECONFIG`
/// set to `kubeconfig`; its stdout, or an error carrying its stderr.
pub fn helm(kubeconfig: &std::path::Path, args: &[&str]) -> Result<String> {
    let helm = paths::tool("helm")?;
    let out = Command::new(&helm)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        // helm keeps its cache and config under $HOME unless told; keep a
        // run's state out of the user's.
        .env("HELM_CACHE_HOME", kubeconfig.with_file_name("helm-cache"))
        .env("HELM_CONFIG_HOME", kubeconfig.with_file_name("helm-config"))
        .env("HELM_DATA_HOME", kubeconfig.with_file_name("helm-data"))
        .output()
        .with_context(|| format!("running {}", helm.display()))?;
    if !out.status.success() {
        bail!(
            "helm {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
