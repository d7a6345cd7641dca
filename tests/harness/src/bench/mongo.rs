//! The MongoDB backend of the benchmark: one MongoDB wire-protocol double
//! per `MongoTarget`, each with the configured per-command latency.

use std::time::Duration;

use anyhow::Result;
use dbgrant_doubles::mongo::{CommandKind, MongoDouble, MongoDoubleConfig, ScramUser};
use serde_json::{Value, json};

use super::backend::{Backend, BindingSpec, Grant, Layout, OpCounts};
use crate::Cluster;

const ADMIN: (&str, &str) = ("dbgrant-operator", "bench-only-Pa55word");

/// MongoDB targets backed by doubles.
pub struct MongoBackend {
    latency: Duration,
    doubles: Vec<MongoDouble>,
}

impl MongoBackend {
    /// Doubles that take `latency` per command.
    pub fn new(latency: Duration) -> Self {
        Self { latency, doubles: Vec::new() }
    }

    fn target_name(t: usize) -> String {
        format!("bench-mongo-{t}")
    }
}

impl Backend for MongoBackend {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    fn binding_kind(&self) -> &'static str {
        "MongoRoleBinding"
    }

    fn target_kind(&self) -> &'static str {
        "MongoTarget"
    }

    async fn start(&mut self, cluster: &Cluster, layout: &Layout) -> Result<Vec<Value>> {
        let mut docs = Vec::new();
        for t in 0..layout.targets {
            let config = MongoDoubleConfig::default().latency(self.latency).user(ScramUser::admin(ADMIN.0, ADMIN.1));
            let double = MongoDouble::start(config).await?;
            let name = Self::target_name(t);
            let ns = &cluster.operator_namespace;
            docs.push(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("{name}-connection"), "namespace": ns},
                "stringData": {"uri": double.uri()}
            }));
            docs.push(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("{name}-scram"), "namespace": ns},
                "stringData": {"username": ADMIN.0, "password": ADMIN.1}
            }));
            docs.push(json!({
                "apiVersion": "dbgrant.io/v1alpha1", "kind": "MongoTarget",
                "metadata": {"name": name},
                "spec": {
                    "connection": {"uriSecretRef": {"name": format!("{name}-connection"), "key": "uri"}},
                    "auth": {"scram": {
                        "usernameSecretRef": {"name": format!("{name}-scram"), "key": "username"},
                        "passwordSecretRef": {"name": format!("{name}-scram"), "key": "password"}
                    }},
                    "oidc": {"authNamePrefix": "entra", "useAuthorizationClaim": true, "authorizationClaim": "groups"},
                    "policy": {"allowedNamespaces": ["bench-*"], "allowedDatabases": ["orders-*"]}
                }
            }));
            self.doubles.push(double);
        }
        Ok(docs)
    }

    fn targets(&self) -> Vec<String> {
        (0..self.doubles.len()).map(Self::target_name).collect()
    }

    fn binding(&self, spec: &BindingSpec) -> Value {
        json!({
            "apiVersion": "dbgrant.io/v1alpha1", "kind": "MongoRoleBinding",
            "metadata": {"name": spec.name, "namespace": spec.namespace},
            "spec": {
                "targetRef": {"name": Self::target_name(spec.target)},
                "subjects": [{"kind": "Group", "objectId": spec.group}],
                "roles": spec.grants.iter().map(|g| json!({"role": g.role, "db": g.scope})).collect::<Vec<_>>()
            }
        })
    }

    fn granted(&self, target: usize, group: &str, grant: &Grant) -> bool {
        self.doubles[target]
            .role(&format!("entra/{group}"), "admin")
            .is_some_and(|r| r.roles.iter().any(|x| x.role == grant.role && x.db == grant.scope))
    }

    fn counters(&self, target: usize) -> OpCounts {
        let mut c = OpCounts::default();
        for r in self.doubles[target].log() {
            if matches!(r.kind, CommandKind::Handshake | CommandKind::Auth) {
                continue;
            }
            c.reads += u64::from(r.kind.is_read());
            c.writes += u64::from(r.kind.is_write());
            *c.by_operation.entry(r.name).or_default() += 1;
        }
        c
    }

    fn clear_counters(&self, target: usize) {
        self.doubles[target].clear_log();
    }

    fn extra(&self) -> Value {
        json!({
            "latencyMsPerCommand": self.latency.as_secs_f64() * 1e3,
            "maxConcurrentWritesPerTarget": self.doubles.iter().map(|d| d.max_concurrent_writes()).max().unwrap_or(0),
        })
    }
}
