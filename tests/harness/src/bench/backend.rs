//! What a backend must provide for the scenarios to measure it.
//!
//! The scenarios ([`super::scenarios`]) only speak Kubernetes (apply, list,
//! watch, delete dbgrant objects as JSON) and ask the backend for manifests
//! and for what its test double saw. MongoDB ([`super::mongo`]) and Cosmos
//! DB ([`super::cosmos`]) implement [`Backend`]; another backend needs:
//!
//! - `start`: its doubles (one target each, or one double serving several
//!   targets), every directory object the [`Layout`] names, and the
//!   manifests to apply (Secrets in the operator namespace, then targets);
//! - `operator_env`: what the operator process needs to reach them;
//! - `binding`: a binding manifest for a [`BindingSpec`];
//! - `granted`: whether its double grants a [`Grant`] to a group;
//! - `counters`/`clear_counters`: reads and writes per target from the
//!   double's log;
//! - `bulk_extra`: backend figures for the bulk report (quota use).
//!
//! Then add its name to [`super::args::BACKENDS`] and a match arm in
//! [`super::run`].

use serde_json::Value;

use crate::Cluster;

/// One grant a binding makes: a role (MongoDB role or Cosmos role
/// definition) at a scope (MongoDB database or Cosmos database).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Role name (`read`, `readWrite`; or a Cosmos role definition).
    pub role: String,
    /// Database it applies to.
    pub scope: String,
}

/// One binding the benchmark creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingSpec {
    /// Its namespace (a team).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Index of its target in [`Backend::targets`].
    pub target: usize,
    /// The Entra group object id it names.
    pub group: String,
    /// What it grants.
    pub grants: Vec<Grant>,
}

/// Reads and writes a backend double saw, by operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Reads of roles, users, assignments or ledger documents.
    pub reads: u64,
    /// Writes of the same.
    pub writes: u64,
    /// Every command or call except handshakes and authentication, by name.
    pub by_operation: std::collections::BTreeMap<String, u64>,
}

impl OpCounts {
    /// Add another count to this one.
    pub fn add(&mut self, other: &OpCounts) {
        self.reads += other.reads;
        self.writes += other.writes;
        for (k, v) in &other.by_operation {
            *self.by_operation.entry(k.clone()).or_default() += v;
        }
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"reads": self.reads, "writes": self.writes, "byOperation": self.by_operation})
    }
}

/// A backend under test: its doubles, targets and binding manifests.
#[allow(async_fn_in_trait)] // used generically, never as a trait object
pub trait Backend {
    /// Label in the report (`mongodb`).
    fn name(&self) -> &'static str;
    /// The binding kind (`MongoRoleBinding`).
    fn binding_kind(&self) -> &'static str;
    /// The target kind (`MongoTarget`).
    fn target_kind(&self) -> &'static str;
    /// Whether all bindings of a group grant the same role at the same scope
    /// (so they share one backend object, as Cosmos DB assignments are
    /// shared), rather than each adding a database to the group's role.
    fn shared_grants(&self) -> bool {
        false
    }
    /// Start the doubles for `layout` (its targets, its groups) and return
    /// the manifests to apply (Secrets in the operator namespace, then the
    /// targets), in order.
    async fn start(&mut self, cluster: &Cluster, layout: &Layout) -> anyhow::Result<Vec<Value>>;
    /// Environment the operator process needs to reach the doubles.
    fn operator_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Target names, by index.
    fn targets(&self) -> Vec<String>;
    /// The manifest of a binding.
    fn binding(&self, spec: &BindingSpec) -> Value;
    /// Whether the backend currently grants `grant` to `group` on a target.
    fn granted(&self, target: usize, group: &str, grant: &Grant) -> bool;
    /// What a target's double saw since its counters were last cleared.
    fn counters(&self, target: usize) -> OpCounts;
    /// Reset a target's counters.
    fn clear_counters(&self, target: usize);
    /// Backend-specific figures for the report.
    fn extra(&self) -> Value {
        Value::Null
    }
    /// Backend-specific figures for the bulk scenario, given how long it
    /// took until every binding was Ready (e.g. the share of a write quota
    /// it used).
    fn bulk_extra(&self, _seconds: f64) -> Value {
        Value::Null
    }

    /// How long until every target can take `writes` more backend writes
    /// without waiting on a write window the bulk filled (None: no such
    /// window). The single-change scenario waits that long first, so it
    /// measures a change, not the tail of the bulk's quota.
    fn window_room_in(&self, _writes: usize) -> Option<std::time::Duration> {
        None
    }

    /// The least apply-to-Ready time the backend's quotas allow each
    /// binding, given when each was applied (since the first apply), or
    /// None where no quota bounds it.
    fn ready_minimum(&self, _applied: &[(std::time::Duration, BindingSpec)]) -> Option<Vec<std::time::Duration>> {
        None
    }
}

/// How the bindings of one run are laid out: teams (namespaces) of
/// `per_namespace` bindings; `per_group` bindings naming each Entra group
/// (as real teams share groups), each group bound on one target. Without
/// `shared`, each of a group's bindings grants a different database, so
/// the group's MongoDB role is the union of `per_group` grants; with
/// `shared`, they all grant the same role on the same database, so they
/// share one Cosmos DB assignment.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Bindings.
    pub bindings: usize,
    /// Targets.
    pub targets: usize,
    /// Distinct groups.
    pub groups: usize,
    /// Bindings per namespace.
    pub per_namespace: usize,
    /// Whether a group's bindings all grant the same thing.
    pub shared: bool,
}

impl Layout {
    /// A layout of `bindings` over `targets`.
    pub fn new(bindings: usize, targets: usize, per_group: usize, per_namespace: usize, shared: bool) -> Self {
        Self { bindings, targets, groups: bindings.div_ceil(per_group).max(1), per_namespace, shared }
    }

    /// The team namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        (0..self.bindings.div_ceil(self.per_namespace)).map(namespace).collect()
    }

    /// Group `g`'s object id.
    pub fn group(&self, g: usize) -> String {
        format!("b0000000-0000-4000-8000-{g:012x}")
    }

    /// The target group `g` is bound on.
    pub fn target_of_group(&self, g: usize) -> usize {
        g % self.targets
    }

    /// Binding `i` of the bulk set.
    pub fn binding(&self, i: usize) -> BindingSpec {
        let g = i % self.groups;
        let copy = i / self.groups;
        BindingSpec {
            namespace: namespace(i / self.per_namespace),
            name: format!("b-{i:05}"),
            target: self.target_of_group(g),
            group: self.group(g),
            grants: vec![if self.shared {
                Grant { role: "read".into(), scope: format!("orders-{}", g % 3) }
            } else {
                Grant {
                    role: if copy.is_multiple_of(2) { "read" } else { "readWrite" }.into(),
                    scope: format!("orders-{copy}"),
                }
            }],
        }
    }

    /// The `j`-th binding of the single-change scenario: a new binding for
    /// an existing group (so its role is a union being extended), granting
    /// a database no other binding grants.
    pub fn single(&self, j: usize, count: usize) -> BindingSpec {
        // Spread over the groups and, by the `+ j`, over every target.
        let g = (j * self.groups / count.max(1) + j) % self.groups;
        BindingSpec {
            namespace: namespace(j % self.bindings.div_ceil(self.per_namespace)),
            name: format!("single-{j:03}"),
            target: self.target_of_group(g),
            group: self.group(g),
            grants: vec![Grant { role: "read".into(), scope: format!("orders-single-{j}") }],
        }
    }

    /// The update of a single-change binding: the same role on one more
    /// database.
    pub fn single_updated(&self, spec: &BindingSpec) -> BindingSpec {
        let mut s = spec.clone();
        let scope = format!("{}-2", spec.grants[0].scope);
        s.grants.push(Grant { role: spec.grants[0].role.clone(), scope });
        s
    }
}

fn namespace(n: usize) -> String {
    format!("bench-team-{n:03}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_shared_on_one_target() {
        let l = Layout::new(10_000, 5, 5, 100, false);
        assert_eq!(l.groups, 2_000);
        assert_eq!(l.namespaces().len(), 100);
        let of_group_7: Vec<BindingSpec> =
            (0..10_000).map(|i| l.binding(i)).filter(|b| b.group == l.group(7)).collect();
        assert_eq!(of_group_7.len(), 5);
        assert!(of_group_7.iter().all(|b| b.target == 7 % 5));
        let scopes: std::collections::BTreeSet<_> = of_group_7.iter().map(|b| b.grants[0].scope.clone()).collect();
        assert_eq!(scopes.len(), 5, "each binding of a group adds a database");
        let singles: std::collections::BTreeSet<_> = (0..50).map(|j| l.single(j, 50).target).collect();
        assert_eq!(singles.len(), 5, "single changes spread over every target");
        let shared = Layout::new(10_000, 5, 5, 100, true);
        let grants: std::collections::BTreeSet<_> =
            (0..10_000).map(|i| shared.binding(i)).map(|b| (b.group, b.grants[0].scope.clone())).collect();
        assert_eq!(grants.len(), 2_000, "with shared grants, one (group, database) per group");
    }
}
